"""The simplest wrapper a team would write instead of the gateway, for `gateway-bench peers`:
an HTTP server that runs `claude --print --output-format json PROMPT` per request, with the
caller's token and a temporary HOME per user, and answers in the Messages API's shape. No
sandbox, no sessions, no limits: what the original design did.

    python3 wrapper.py PORT CLAUDE_BIN   (ANTHROPIC_BASE_URL from the environment)
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOMES = tempfile.mkdtemp(prefix="wrapper-homes-")
CLAUDE = sys.argv[2]


def last_user_text(body):
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    return ""


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        token = self.headers.get("authorization", "").removeprefix("Bearer ").strip()
        home = os.path.join(HOMES, hashlib.sha256(token.encode()).hexdigest()[:16])
        os.makedirs(home, exist_ok=True)
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "ANTHROPIC_BASE_URL": os.environ["ANTHROPIC_BASE_URL"],
            "CLAUDE_CODE_OAUTH_TOKEN": token,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        run = subprocess.run(
            [CLAUDE, "--print", "--output-format", "json", "--model", body.get("model", "sonnet"),
             last_user_text(body)],
            env=env, cwd=home, capture_output=True, timeout=300,
        )
        if run.returncode != 0:
            self.send_response(502)
            self.end_headers()
            return
        result = json.loads(run.stdout)
        answer = json.dumps({
            "type": "message", "role": "assistant", "model": body.get("model"),
            "content": [{"type": "text", "text": result.get("result", "")}],
            "stop_reason": "end_turn", "usage": result.get("usage", {}),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(f"wrapper listening on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()
