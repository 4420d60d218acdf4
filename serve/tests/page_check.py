"""Drives the chat page in a real headless Chromium over the DevTools protocol.

Run by serve/tests/page.rs against a running server; by hand:

    python3 serve/tests/page_check.py --url http://127.0.0.1:8000/ --screenshot /tmp/page.png

Checks: the page loads and names the model; the system prompt and the temperature set on the
page reach the request; a sent message gets an answer that appears piece by piece (streamed);
with tools on, a forced call is shown; a screenshot is written. Needs Debian's `chromium` and
the `websocket-client` package. Every check raises on failure.
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

import websocket

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1200,800",
]


class DevTools:
    """A minimal DevTools protocol client on one page target."""

    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events = []

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression, what, timeout=60.0, interval=0.02):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}")


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print("ok:", what)


def launch(chromium, profile):
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.time() + 60
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if time.time() > deadline:
            raise RuntimeError("chromium did not open its DevTools port")
        time.sleep(0.1)
    port = int(open(port_file).read().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        targets = json.load(response)
    page = next(t for t in targets if t["type"] == "page")
    return process, page["webSocketDebuggerUrl"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    profile = tempfile.mkdtemp(prefix="internlm2-page-")
    process = None
    try:
        process, ws_url = launch(args.chromium, profile)
        tools = DevTools(ws_url)
        tools.call("Page.enable")
        tools.call("Runtime.enable")
        tools.call("Network.enable")
        tools.call("Page.navigate", url=args.url)
        tools.wait_for(f"document.getElementById('model') && "
                       f"document.getElementById('model').textContent === {json.dumps(args.model)}",
                       "the page to load and name the model")
        check(True, "page loads and names the model")

        # Settings: a system prompt and temperature 0, then a message.
        tools.evaluate("""(() => {
            document.getElementById('system').value = 'You are a test assistant.';
            const t = document.getElementById('temperature');
            t.value = '0'; t.dispatchEvent(new Event('input'));
            document.getElementById('max-tokens').value = '48';
            document.getElementById('input').value = 'Hello there!';
            document.getElementById('composer').requestSubmit();
        })()""")
        # Record the answer's length as it grows: a streamed answer shows intermediate lengths.
        lengths = []
        deadline = time.time() + 90
        while time.time() < deadline:
            state = tools.evaluate("""(() => {
                const answers = document.querySelectorAll('.message.assistant .content');
                const last = answers[answers.length - 1];
                return [last ? last.textContent.length : 0,
                        document.querySelectorAll('.message.assistant .finish').length];
            })()""")
            if not lengths or lengths[-1] != state[0]:
                lengths.append(state[0])
            if state[1] >= 1:
                break
            time.sleep(0.005)
        check(lengths and lengths[-1] > 0, f"an answer appears ({lengths[-1] if lengths else 0} characters)")
        check(len([n for n in lengths if n > 0]) >= 2,
              f"the answer streams in (lengths seen: {lengths[:12]}...)")
        sent = [e["params"]["request"] for e in tools.events
                if e.get("method") == "Network.requestWillBeSent"
                and e["params"]["request"]["url"].endswith("/v1/chat/completions")]
        check(len(sent) == 1, "one chat request sent")
        body = json.loads(sent[0]["postData"])
        check(body["messages"][0] == {"role": "system", "content": "You are a test assistant."},
              "the system prompt set on the page is sent")
        check(body["temperature"] == 0 and body["stream"] is True,
              "the temperature set on the page is sent, streaming on")

        # Tools on, required: the forced call is shown.
        tools.evaluate("""(() => {
            document.getElementById('tool-choice').value = 'required';
            document.getElementById('input').value = 'Weather in Paris?';
            document.getElementById('composer').requestSubmit();
        })()""")
        call = tools.wait_for(
            "(() => { const c = document.querySelector('.tool-call');"
            " return c && document.querySelectorAll('.finish').length >= 2 ? c.textContent : null; })()",
            "a tool call to be shown", timeout=90)
        check(call.startswith("\U0001F527 get_weather({") and call.endswith("})"),
              f"the tool call is shown: {call}")
        arguments = json.loads(call[len("\U0001F527 get_weather("):-1])
        check(isinstance(arguments.get("city"), str), "its arguments are the schema's JSON")

        shot = tools.call("Page.captureScreenshot", format="png")
        os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
        with open(args.screenshot, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
        check(os.path.getsize(args.screenshot) > 1000, f"screenshot written to {args.screenshot}")
        try:
            tools.call("Browser.close")
        except Exception:
            pass
        print("chat page: all checks passed")
    finally:
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
