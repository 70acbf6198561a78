"""The admin page's locks against an outsider (issue 15, holes 1 and 2): no global lockout, the
per-client limit (IPv6 /64s as one client) and its memory bound, the argon2 throttle, server-side
sessions (logout, absolute lifetime, password change), ``next`` on /login, password strength,
metrics-only API tokens, and the tokens page's POST-redirect-GET and revoke confirmation.

Through Flask's test client with a real app, real argon2 and real files; client addresses come in
as ``environ_base={"REMOTE_ADDR": ...}``.
"""
from __future__ import annotations

import calendar
import hashlib
import json
import re
import stat
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from appliance.web import auth, create_app, tokens

PASSWORD = "correct horse battery"
COOKIE = "flowtap_session"


# --- fixtures and helpers --------------------------------------------------------------------------

@pytest.fixture
def make_app(tmp_path):
    """An app factory over one data directory (empty archive/): ``make_app(**settings)``."""
    data = tmp_path / "data"
    (data / "archive").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    cfg = tmp_path / "flowtap.toml"
    cfg.write_text('[sensor]\nid = "tap1"\n')

    def make(**settings):
        return create_app(config_path=cfg, data_dir=str(data), runtime_dir=str(tmp_path / "run"),
                          settings={"TESTING": True, **settings})
    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def admin(app):
    """A client logged in as admin (the password set through the setup page)."""
    client = app.test_client()
    setup(client, app, PASSWORD)
    return client


def csrf(client, url: str = "/login") -> str:
    page = client.get(url)
    m = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert m, page.text
    return m.group(1)


def setup(client, app, password: str):
    token = (Path(app.instance_path) / "setup-token").read_text().strip()
    r = client.post("/setup", data={"csrf_token": csrf(client, "/setup"), "token": token,
                                    "password": password, "confirm": password})
    if password == PASSWORD:
        assert r.status_code == 302 and r.location == "/", r.text
    return r


def login(client, password: str = PASSWORD, addr: str = "127.0.0.1", next_: str = ""):
    token = csrf(client)
    return client.post("/login", data={"csrf_token": token, "password": password, "next": next_},
                       environ_base={"REMOTE_ADDR": addr})


def make_token(admin, name: str, scope: str | None = None) -> str:
    """A new token's secret, from the page the POST redirects to."""
    form = {"csrf_token": csrf(admin, "/tokens"), "name": name, **({"scope": scope} if scope else {})}
    page = admin.post("/tokens", data=form, follow_redirects=True)
    assert page.status_code == 200, page.text
    return re.search(r'<code id="token-secret">([^<]+)</code>', page.text).group(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stream_status(app, token: str, addr: str) -> int:
    """The stream's answer to ``token`` (the body, endless, is not read)."""
    r = app.test_client().get("/api/v1/stream", headers=bearer(token), buffered=False,
                              environ_base={"REMOTE_ADDR": addr})
    r.close()
    return r.status_code


def in_parallel(jobs) -> list:
    """Run the callables at once (from a barrier) and return their results in order."""
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = jobs[i]()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


class CountingHasher(PasswordHasher):
    """argon2id as the page uses it, counting the verifications that run at the same time."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.running = self.peak = self.runs = 0

    def verify(self, hash, password):
        with self.lock:
            self.running += 1
            self.runs += 1
            self.peak = max(self.peak, self.running)
        try:
            return super().verify(hash, password)
        finally:
            with self.lock:
                self.running -= 1


# --- hole 1: no global lockout; the per-client limit ----------------------------------------------

@pytest.mark.slow
def test_failures_from_many_addresses_lock_nobody_out(app, admin):
    stream_token = make_token(admin, "laptop", "stream")
    scrape_token = make_token(admin, "prometheus", "metrics")

    def five_failures(addr: str):
        return [login(app.test_client(), "wrong password", addr).status_code for _ in range(5)]
    codes = in_parallel([lambda a=f"10.7.0.{i}": five_failures(a) for i in range(10)])
    assert all(c == 403 for run in codes for c in run)           # 50 failures, none refused

    assert login(app.test_client(), PASSWORD, "10.8.0.1").location == "/"
    assert stream_status(app, stream_token, "10.8.0.2") == 200
    anon = app.test_client()
    r = anon.get("/metrics", headers=bearer(scrape_token), environ_base={"REMOTE_ADDR": "10.8.0.3"})
    assert r.status_code == 200 and "flowtap_recording" in r.text
    assert anon.get("/metrics", auth=("admin", PASSWORD),
                    environ_base={"REMOTE_ADDR": "10.8.0.4"}).status_code == 200
    # A flood of wrong tokens from many addresses does not stop a valid one either.
    for i in range(60):
        anon.get("/api/v1/stream", headers=bearer("guess"), environ_base={"REMOTE_ADDR": f"10.9.0.{i}"})
    assert stream_status(app, stream_token, "10.9.1.1") == 200


def test_one_address_is_still_limited_and_told_so(app, admin):
    c = app.test_client()
    for _ in range(5):
        assert login(c, "wrong password", "10.0.0.9").status_code == 403
    r = login(c, PASSWORD, "10.0.0.9")
    assert r.status_code == 429 and "this address" in r.text      # even the right password: wait
    assert login(c, PASSWORD, "::ffff:10.0.0.9").status_code == 429  # the same address, mapped
    assert login(app.test_client(), PASSWORD, "10.0.0.10").location == "/"
    for _ in range(5):
        assert app.test_client().get("/api/v1/stream", headers=bearer("guess"),
                                     environ_base={"REMOTE_ADDR": "10.0.1.1"}).status_code == 401
    r = app.test_client().get("/api/v1/stream", headers=bearer("guess"),
                              environ_base={"REMOTE_ADDR": "10.0.1.1"})
    assert r.status_code == 429 and "from this address" in r.text and r.headers["Retry-After"]


def test_an_ipv6_64_is_one_client(app, admin):
    for i in range(5):                 # five addresses of one /64: one client's five failures
        assert login(app.test_client(), "wrong password", f"2001:db8:1:2::{i + 1:x}").status_code == 403
    r = login(app.test_client(), PASSWORD, "2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert r.status_code == 429 and "this network (/64)" in r.text
    assert login(app.test_client(), PASSWORD, "2001:db8:1:3::1").location == "/"


def test_the_limiter_stays_small_under_an_address_spray(app):
    limiter = app.extensions["flowtap_limiter"]
    start = time.monotonic()
    for i in range(100_000):
        limiter.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
        if i % 1000 == 0:              # a quadratic prune would take minutes: fail early
            assert time.monotonic() - start < 15, f"{i} failures took too long"
    assert len(limiter.clients) <= 10_000
    assert len(limiter.clients) + sum(len(q) for q in limiter.clients.values()) <= 20_000
    newest = f"10.{99_999 >> 16 & 255}.{99_999 >> 8 & 255}.{99_999 & 255}"
    for _ in range(4):
        limiter.failed(newest)
    assert limiter.blocked(newest)     # the latest sprayers are the ones still counted
    keys = {auth.client_key(f"2001:db8:7:7:{i >> 16 & 0xffff:x}:{i & 0xffff:x}::1") for i in range(10_000)}
    assert keys == {"2001:db8:7:7::/64"}


def test_argon2_runs_are_bounded_and_the_right_password_gets_its_turn(make_app, monkeypatch):
    app = make_app(ARGON2_CONCURRENCY=1)
    setup(app.test_client(), app, PASSWORD)
    counting = CountingHasher()
    monkeypatch.setattr(auth, "hasher", counting)
    jobs = [lambda a=f"10.5.0.{i}": login(app.test_client(), "wrong password", a).status_code
            for i in range(6)]
    jobs.append(lambda: login(app.test_client(), PASSWORD, "10.5.1.1").location)
    start = time.monotonic()
    results = in_parallel(jobs)
    elapsed = time.monotonic() - start
    assert results == [403] * 6 + ["/"]
    assert counting.runs == 7 and counting.peak == 1
    print(f"7 logins at once, one argon2 at a time: {elapsed:.2f} s")


def test_a_full_argon2_queue_says_busy_not_refused(make_app):
    app = make_app(ARGON2_CONCURRENCY=1, ARGON2_QUEUE=0)
    setup(app.test_client(), app, PASSWORD)
    clients = [app.test_client() for _ in range(4)]
    for c in clients:
        csrf(c)
    pages = in_parallel([lambda c=c, i=i: c.post("/login", data={"csrf_token": csrf(c), "password": "wrong"},
                                                   environ_base={"REMOTE_ADDR": f"10.6.0.{i}"})
                         for i, c in enumerate(clients)])
    codes = sorted(p.status_code for p in pages)
    assert 403 in codes and 503 in codes and 429 not in codes, codes
    busy = next(p for p in pages if p.status_code == 503)
    assert "busy" in busy.text and "this address" not in busy.text and busy.headers["Retry-After"]
    # A busy answer is no failure: only the verified attempts count.
    assert len(app.extensions["flowtap_limiter"].clients) == codes.count(403)


# --- hole 2: server-side sessions -------------------------------------------------------------------

def test_logout_kills_a_copied_cookie(app, admin):
    thief = app.test_client()
    thief.set_cookie(COOKIE, admin.get_cookie(COOKIE).value)
    token = csrf(thief, "/tokens")                                # the copy works, so far
    assert thief.get("/config").status_code == 200
    admin.post("/logout", data={"csrf_token": csrf(admin, "/")})
    assert thief.get("/config").status_code == 302
    r = thief.post("/tokens", data={"csrf_token": token, "name": "stolen"})
    assert r.status_code == 302 and r.location.startswith("/login")
    assert app.extensions["flowtap_tokens"].tokens == []
    assert admin.get("/").status_code == 302


def test_a_session_ends_at_its_absolute_lifetime_however_busy(make_app):
    app = make_app(SESSION_ABSOLUTE_LIFETIME=2)
    admin = app.test_client()
    setup(admin, app, PASSWORD)
    begun = time.time()
    cookie = admin.get("/").headers["Set-Cookie"]
    expires = re.search(r"Expires=([^;]+)", cookie).group(1)
    assert calendar.timegm(time.strptime(expires, "%a, %d %b %Y %H:%M:%S GMT")) <= begun + 3
    copy = app.test_client()          # a copy that ignores the cookie's expiry: the server decides
    copy.set_cookie(COOKIE, admin.get_cookie(COOKIE).value)
    seen = []
    while time.time() - begun < 3:
        seen.append((time.time() - begun, admin.get("/dashboard/panel").status_code))
        time.sleep(0.5)
    assert all(code == 200 for t, code in seen if t < 1.5)
    assert all(code == 302 for t, code in seen if t >= 2.1) and seen[-1][1] == 302
    assert copy.get("/config").status_code == 302
    assert login(admin).location == "/" and admin.get("/").status_code == 200


def test_password_change_ends_every_other_session(app, admin):
    other = app.test_client()
    assert login(other).location == "/"
    old_copy = app.test_client()
    old_copy.set_cookie(COOKIE, admin.get_cookie(COOKIE).value)
    r = admin.post("/password", data={"csrf_token": csrf(admin, "/password"), "current": PASSWORD,
                                      "new": "new tidal password", "confirm": "new tidal password"})
    assert r.status_code == 302
    assert admin.get("/").status_code == 200
    assert other.get("/").status_code == 302 and old_copy.get("/").status_code == 302
    stored = json.loads((Path(app.instance_path) / "sessions.json").read_text())["sessions"]
    assert len(stored) == 1


def test_sessions_are_bounded_and_kept_private(app, admin):
    with app.app_context():
        for _ in range(40):
            app.extensions["flowtap_sessions"].start()
    path = Path(app.instance_path) / "sessions.json"
    assert len(json.loads(path.read_text())["sessions"]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert admin.get("/").status_code == 302              # the oldest session made way
    signed = app.session_interface.get_signing_serializer(app)
    assert signed.loads(admin.get_cookie(COOKIE).value)["sid"] not in path.read_text()    # hashes only


# --- next, password strength -----------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("/config\r\nSet-Cookie: evil=1", "/"), ("/\r\n/evil.example", "/"), ("/a\nb", "/"),
    ("/\t/evil.example", "/"), ("/\\evil.example", "/"), ("/a\\..\\\\evil.example", "/"),
    ("/\x00", "/"), ("/\x85", "/"), ("\r\n/config", "/"),
    ("/%0d%0aSet-Cookie:%20evil=1", "/%0d%0aSet-Cookie:%20evil=1"),     # stays escaped: a path
    ("/%5c%5cevil.example", "/%5c%5cevil.example"), ("/search?t=-1h&filter=tcp", "/search?t=-1h&filter=tcp"),
    ("/search?filter=host é", "/search?filter=host%20%C3%A9"),
])
def test_next_never_splits_the_location_header(app, admin, target, expected):
    r = login(app.test_client(), next_=target)
    assert r.status_code == 302 and r.location == expected
    assert all("\r" not in v and "\n" not in v for _, v in r.headers.items())
    assert "evil" not in r.headers.get("Set-Cookie", "")


def test_a_page_path_with_crlf_round_trips_through_login_safely(app, admin):
    anon = app.test_client()
    r = anon.get("/config%0d%0aSet-Cookie:%20evil=1")
    nxt = urllib.parse.unquote(re.search(r"next=([^&]+)", r.location).group(1))
    assert "\r\n" in nxt
    r = login(anon, next_=nxt)
    assert r.status_code == 302 and r.location == "/" and "evil" not in r.headers.get("Set-Cookie", "")


WEAK = ["aaaaaaaaaa", "abababababab", "passwordpassword", "1234567890", "0987654321", "qwertyuiop",
        "abcdefghijk", "zyxwvutsrqp", "Password2024!", "iloveyou12", "P@ssw0rd123", "1qaz2wsx3edc",
        "aaaaaaaaab", "qwerty123456", "letmein!!!!"]


@pytest.mark.parametrize("weak", WEAK)
def test_weak_passwords_are_refused_at_setup(app, weak):
    r = setup(app.test_client(), app, weak)
    assert r.status_code == 400 and "too easy to guess" in r.text
    assert not (Path(app.instance_path) / "auth.json").exists()


def test_weak_passwords_are_refused_at_a_change_and_good_ones_taken(app, admin):
    for weak in WEAK[:5]:
        r = admin.post("/password", data={"csrf_token": csrf(admin, "/password"), "current": PASSWORD,
                                          "new": weak, "confirm": weak})
        assert r.status_code == 400 and "too easy to guess" in r.text
    assert login(app.test_client(), weak).status_code == 403
    current = PASSWORD
    for good in ("4829!37#5a", "tidal basin lamp", "Grün Vogel 17"):
        r = admin.post("/password", data={"csrf_token": csrf(admin, "/password"), "current": current,
                                          "new": good, "confirm": good})
        assert r.status_code == 302, (good, r.text)
        current = good


# --- API token scopes ------------------------------------------------------------------------------

def test_each_token_opens_its_own_scope_only(app, admin):
    stream_token = make_token(admin, "laptop", "stream")
    scrape_token = make_token(admin, "prometheus", "metrics")
    anon = app.test_client()
    for url in ("/metrics", "/api/status"):
        assert anon.get(url, headers=bearer(scrape_token)).status_code == 200
        r = anon.get(url, headers=bearer(stream_token))
        assert r.status_code == 403 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        r = anon.get(url, headers=bearer("guess"))
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert anon.get(url, auth=("admin", PASSWORD)).status_code == 200      # Basic still works
    r = anon.get("/api/v1/stream", headers=bearer(scrape_token))
    assert r.status_code == 403 and "for metrics only" in r.text
    assert stream_status(app, stream_token, "127.0.0.1") == 200
    for url in ("/", "/config", "/tokens", "/archives"):
        assert anon.get(url, headers=bearer(scrape_token)).status_code == 302
    r = admin.post("/tokens", data={"csrf_token": csrf(admin, "/tokens"), "name": "x", "scope": "admin"})
    assert r.status_code == 400 and "Choose what the token is for" in r.text
    page = admin.get("/tokens").text
    assert "<td>metrics</td>" in page and "<td>stream</td>" in page


def test_tokens_from_before_scopes_are_stream_tokens(make_app):
    app = make_app()
    secret = "an old token from before scopes, long enough to be random"
    entry = {"id": "0123456789ab", "name": "old laptop", "created": time.time(),
             "sha256": hashlib.sha256(secret.encode()).hexdigest()}
    (Path(app.instance_path) / "api-tokens.json").write_text(json.dumps({"tokens": [entry]}))
    app = make_app()
    setup(app.test_client(), app, PASSWORD)
    assert stream_status(app, secret, "127.0.0.1") == 200
    assert app.test_client().get("/metrics", headers=bearer(secret)).status_code == 403


# --- the tokens page ---------------------------------------------------------------------------------

def test_making_a_token_redirects_and_shows_the_secret_once(app, admin):
    r = admin.post("/tokens", data={"csrf_token": csrf(admin, "/tokens"), "name": "laptop"})
    assert r.status_code == 303 and r.location == "/tokens"
    store = app.extensions["flowtap_tokens"]
    assert len(store.tokens) == 1 and store.tokens[0]["scope"] == "stream"
    secret_in_cookie = admin.get_cookie(COOKIE).value
    page = admin.get("/tokens").text
    secret = re.search(r'<code id="token-secret">([^<]+)</code>', page).group(1)
    assert store.find(secret) is store.tokens[0]
    assert secret not in r.location and secret not in secret_in_cookie
    assert 'id="copy-token"' in page and " hidden" in page and "/static/tokens.js" in page
    reload = admin.get("/tokens").text                            # a reload: no secret, no new token
    assert secret not in reload and 'id="token-secret"' not in reload and len(store.tokens) == 1
    other = app.test_client()
    assert login(other).location == "/"
    make_token(admin, "second")
    assert 'id="token-secret"' not in other.get("/tokens").text   # one session's secret only
    js = admin.get("/static/tokens.js")
    assert js.status_code == 200 and "navigator.clipboard" in js.text and "addRange" in js.text
    js.close()
    assert "/static/tokens.js" not in admin.get("/config").text   # loaded by the tokens page only


def test_one_time_slots_are_bounded():
    slots = tokens.OneTimeSlots(32)
    for i in range(1000):
        slots.put(f"session {i}", {"secret": str(i)})
    assert len(slots.slots) == 32 and slots.take("session 0") is None
    assert slots.take("session 999") == {"secret": "999"} and slots.take("session 999") is None


def test_revoking_asks_first_and_works_without_script(app, admin):
    make_token(admin, '<b>bob</b> "laptop"')
    entry = app.extensions["flowtap_tokens"].tokens[0]
    page = admin.get("/tokens").text
    assert f'<form method="get" action="/tokens/{entry["id"]}/revoke"' in page
    assert 'class="danger"' in page
    ask = admin.get(f"/tokens/{entry['id']}/revoke")
    assert ask.status_code == 200
    assert "Revoke the token &lt;b&gt;bob&lt;/b&gt; &#34;laptop&#34;?" in ask.text
    assert f'<form method="post" action="/tokens/{entry["id"]}/revoke"' in ask.text
    assert 'name="csrf_token"' in ask.text and 'href="/tokens"' in ask.text and "Cancel" in ask.text
    assert app.extensions["flowtap_tokens"].active(entry["id"])  # asking revokes nothing
    r = admin.post(f"/tokens/{entry['id']}/revoke", data={"csrf_token": csrf(admin, "/tokens")})
    assert r.status_code == 302 and not app.extensions["flowtap_tokens"].active(entry["id"])
    assert admin.get(f"/tokens/{entry['id']}/revoke").status_code == 404
    assert admin.get("/tokens/" + "x" * 5000 + "/revoke").status_code == 404
    assert app.test_client().get(f"/tokens/{entry['id']}/revoke").status_code == 302   # login first
