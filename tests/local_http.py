"""A tiny HTTP server on 127.0.0.1 for download tests: in-memory files, Range requests, faults."""
import http.server
import re
import threading


class LocalServer:
    """Serves ``files`` (URL path -> bytes). ``cut[path] = n`` drops the connection after n body
    bytes of the next response for that path; a path in ``hang_up`` gets its connection closed
    without any answer (a dead host that never hangs); ``honour_range = False`` makes it ignore Range."""

    def __init__(self):
        self.files, self.cut, self.requests, self.hang_up = {}, {}, [], set()
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                rng = self.headers.get('Range')
                server.requests.append((self.path, rng))
                if self.path in server.hang_up:
                    self.close_connection = True
                    return
                if self.path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[self.path]
                m = re.fullmatch(r'bytes=(\d+)-', rng or '')
                start = int(m.group(1)) if m and server.honour_range else 0
                if start >= len(data) and start:
                    self.send_error(416)
                    return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
                self.send_header('Content-Length', str(len(data) - start))
                self.end_headers()
                body = data[start:]
                limit = server.cut.pop(self.path, None)
                self.wfile.write(body if limit is None else body[:limit])
                self.wfile.flush()
                if limit is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
