"""`gptlab serve` refuses foreign Host names (DNS rebinding) and foreign Origins (cross-origin pages)."""

import httpx

from gptlab.serve import build_app, running_server
from gptlab.serve.guard import default_allowed_hosts
from tests.serve.helpers import CHAT

BODY = {"model": "tiny", "messages": CHAT, "max_tokens": 1, "stream": False}


def test_only_loopback_host_names_by_default(url):
    port = url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert httpx.get(f"{url}/api/tags", headers={"Host": host}).status_code == 200, host
    r = httpx.post(f"{url}/api/chat", json=BODY, headers={"Host": f"attacker.example:{port}"})
    assert r.status_code == 403 and "attacker.example" in r.json()["error"] and "--allow-host" in r.json()["error"]
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Host": "192.168.1.5"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"


def test_cross_origin_requests_are_refused_same_origin_allowed(url):
    evil = {"Origin": "http://attacker.example", "Content-Type": "text/plain"}  # a page's "simple" request
    r = httpx.post(f"{url}/api/generate", content=b'{"prompt": "hi", "stream": false}', headers=evil)
    assert r.status_code == 403 and "--allow-origin http://attacker.example" in r.json()["error"]
    r = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Origin": "null"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    port = url.rsplit(":", 1)[1]
    assert httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Origin": f"http://localhost:{port}"}).status_code == 403  # other Host
    assert httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Origin": url}).status_code == 200  # its own page


def test_allowed_hosts_and_origins_get_through_with_cors(model_dir):
    app = build_app(model_dir, model_name="tiny", allowed_hosts=["gpu-box.lan"], allowed_origins=["http://localhost:3000"])
    with running_server(app) as base:
        assert httpx.get(f"{base}/api/tags", headers={"Host": "gpu-box.lan:11434"}).status_code == 200
        assert httpx.get(f"{base}/api/tags", headers={"Host": "other.lan"}).status_code == 403
        origin = {"Origin": "http://localhost:3000"}
        preflight = httpx.options(
            f"{base}/v1/chat/completions", headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        )
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        r = httpx.post(f"{base}/v1/chat/completions", json=BODY, headers=origin)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert httpx.post(f"{base}/v1/chat/completions", json=BODY, headers={"Origin": "http://localhost:4000"}).status_code == 403


def test_default_allowed_hosts_follow_the_bind_address():
    assert default_allowed_hosts("127.0.0.1") == [] and default_allowed_hosts("::1") == [] and default_allowed_hosts("localhost") == []
    assert default_allowed_hosts("0.0.0.0") == ["*"] and default_allowed_hosts("192.168.1.5") == ["*"]
    assert default_allowed_hosts("0.0.0.0", ["GPU-box.lan"]) == ["gpu-box.lan"]
