"""The alerts pages through Flask's test client: real captures recorded by `flowtap record`, alerts
built from the sessions `flowtap ra` prints for the same captures and imported into the store
beside the archives; the list, counts per signature, one alert and its sessions, the around view
and its CSV, the alert badges of the session tables, the dashboard's last hour, and every refusal.
"""
from __future__ import annotations

import csv
import hashlib
import html
import io
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from appliance import alerts, archive, query
from appliance.alert_types import Alert
from appliance.web import create_app

PASSWORD = "correct horse battery"
FLOWTAP = str(Path(sys.executable).with_name("flowtap"))
CAPTURES = ["basic/dpkt-http.pcap", "basic/pcpp-dns.pcap"]
XSS_MSG = "<script>alert(1)</script> ET EXPLOIT"
XSS_CLASS = '"><img src=x onerror=alert(2)>'


# --- fixtures ------------------------------------------------------------------------------------

def ra_sessions(capture: Path) -> list[dict]:
    """The sessions of a capture as `flowtap ra` prints them (numbers, Unix times)."""
    out = subprocess.run([FLOWTAP, "ra", "-nn", "-u", "-c", ",", "-r", str(capture), "-s", "stime",
                          "ltime", "proto", "saddr", "sport", "daddr", "dport", "community_id"],
                         check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return [{"stime": float(r["StartTime"]), "ltime": float(r["LastTime"]), "proto": int(r["Proto"]),
             "saddr": r["SrcAddr"], "sport": int(r["Sport"]) if r["Sport"] else None,
             "daddr": r["DstAddr"], "dport": int(r["Dport"]) if r["Dport"] else None,
             "community_id": r["CommunityId"] or None} for r in rows]


def make_alert(n: int, t: float, sid: int, msg: str, proto: int | None, saddr: str | None,
               sport: int | None, daddr: str | None, dport: int | None, **kw) -> Alert:
    kw.setdefault("priority", 2)
    return Alert(time=t, gid=kw.pop("gid", 1), sid=sid, rev=kw.pop("rev", 1), msg=msg, proto=proto,
                 saddr=saddr, sport=sport, daddr=daddr, dport=dport, format="eve",
                 raw=f'{{"n": {n}, "sid": {sid}, "time": {t}}}', **kw)


@pytest.fixture(scope="module")
def capture_sessions(pcaps_dir) -> dict[str, dict]:
    """The sessions the alerts fire on, by name, as `flowtap ra` prints them."""
    http = ra_sessions(pcaps_dir / "basic/dpkt-http.pcap")
    dns = ra_sessions(pcaps_dir / "basic/pcpp-dns.pcap")
    long_http = next(s for s in http if s["sport"] == 3372)        # 30 s: the page download
    google = next(s for s in http if s["sport"] == 3371)
    dns_query = next(s for s in http if s["proto"] == 17)
    mdns = next(s for s in dns if s["daddr"] == "224.0.0.251")
    return {"http": long_http, "google": google, "dns": dns_query, "mdns": mdns,
            "all_http": http, "all_dns": dns}


@pytest.fixture(scope="module")
def recorded(pcaps_dir, tmp_path_factory, capture_sessions) -> Path:
    """A data directory: two real captures recorded by `flowtap record`, and alerts imported
    beside their archives."""
    data = tmp_path_factory.mktemp("alerts-data")
    cfg = data / "flowtap.toml"
    cfg.write_text("[archive]\nmin_free_percent = 0.0\n")
    argv = [FLOWTAP, "record", "-q", "-c", str(cfg), "-d", str(data)]
    for c in CAPTURES:
        argv += ["-r", str(pcaps_dir / c)]
    subprocess.run(argv, check=True, capture_output=True, cwd=data)
    s = capture_sessions
    http, google, dns, mdns = s["http"], s["google"], s["dns"], s["mdns"]
    imported = alerts.import_alerts(data / "archive", [
        # on the long HTTP session: as the server answers (reverse orientation), with its Community ID
        make_alert(1, http["stime"] + 5.25, 2100498, XSS_MSG, 6, http["daddr"], http["dport"],
                   http["saddr"], http["sport"], priority=1, classification=XSS_CLASS,
                   community_id=http["community_id"], app_proto="http", action="allowed",
                   flow_id=1234567890123),
        make_alert(2, http["stime"] + 10.5, 2013504, "ET POLICY GNU/Linux APT User-Agent", 6,
                   http["saddr"], http["sport"], http["daddr"], http["dport"], priority=2,
                   classification="Attempted Information Leak"),
        # 20 s after the Google session ended: still within its 30 s window
        make_alert(3, google["ltime"] + 20, 2013504, "ET POLICY GNU/Linux APT User-Agent", 6,
                   google["saddr"], google["sport"], google["daddr"], google["dport"], priority=2),
        make_alert(4, dns["stime"] + 0.1, 2027863, "ET INFO DNS Query to a *.pw domain", 17,
                   dns["saddr"], dns["sport"], dns["daddr"], dns["dport"], priority=3),
        make_alert(5, mdns["stime"] + 1, 2027863, "ET INFO DNS Query to a *.pw domain", 17,
                   mdns["saddr"], mdns["sport"], mdns["daddr"], mdns["dport"], priority=3),
        # no session: another network, two hours later; a preprocessor alert without a priority
        make_alert(6, http["stime"] + 7200, 524, "(spp_sdf) SDF combination alert", 6, "192.0.2.7",
                   4444, "198.51.100.9", 445, gid=138, priority=None),
        # the HTTP session's endpoints but another session's Community ID: links to nothing
        make_alert(7, http["stime"] + 6, 2200003, "SURICATA IPv4 truncated packet", 6,
                   http["saddr"], http["sport"], http["daddr"], http["dport"], priority=3,
                   community_id="1:AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ])
    assert imported.imported == 7 and imported.linked == 5
    return data


@pytest.fixture
def app(data_dir, tmp_path):
    (tmp_path / "run").mkdir()
    return create_app(config_path=tmp_path / "none.toml", data_dir=str(data_dir),
                      runtime_dir=str(tmp_path / "run"), settings={"TESTING": True})


@pytest.fixture
def admin(app):
    c = app.test_client()
    token = (Path(app.instance_path) / "setup-token").read_text().strip()
    r = c.post("/setup", data={"csrf_token": csrf(c, "/setup"), "token": token,
                               "password": PASSWORD, "confirm": PASSWORD})
    assert r.status_code == 302 and r.location == "/"
    return c


def csrf(client, url: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', client.get(url).text)
    assert m
    return m.group(1)


def all_alerts(archive_dir: Path) -> list[dict]:
    return alerts.list_alerts(archive_dir)


def by_sid(archive_dir: Path, sid: int) -> list[dict]:
    return [a for a in all_alerts(archive_dir) if a["sid"] == sid]


def table_rows(text: str, table: str) -> list[list[str]]:
    """The cells (inner HTML) of each body row of the first <table class="TABLE">."""
    body = text.split(f'<table class="{table}">', 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def text_of(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).strip()


def around_expected(archive_dir: Path, alert: dict, seconds: float) -> list[dict]:
    """Every record of either host overlapping the alert's time ± seconds, read by query.py."""
    hosts = {alert["saddr"], alert["daddr"]}
    t = alert["time"]
    return sorted((r for r in query.read_records(archive_dir)
                   if (r["saddr"] in hosts or r["daddr"] in hosts)
                   and r["stime"] <= t + seconds and r["ltime"] >= t - seconds),
                  key=lambda r: r["stime"])


def files_state(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# --- refusals ------------------------------------------------------------------------------------

def alert_urls(archive_dir: Path) -> list[str]:
    a = all_alerts(archive_dir)[0]["id"]
    return ["/alerts", "/alerts?t=&sid=2013504", f"/alerts/{a}", f"/alerts/{a}/around",
            f"/alerts/{a}/around?s=60", f"/alerts/{a}/around.csv"]


def test_every_alert_page_needs_a_session(admin, app, archive_dir):
    anon = app.test_client()
    for url in alert_urls(archive_dir):
        assert admin.get(url).status_code == 200, url
        r = anon.get(url)
        assert r.status_code == 302 and r.location.startswith("/login?next="), url
        assert "ET POLICY" not in r.text


@pytest.mark.parametrize("alert_id", ["0123456789abcdef", "0123456789ABCDEF", "0123456789abcde",
                                      "0123456789abcdef0", "0123456789abcdeg", "..%2F..%2Fetc",
                                      "%2Fetc%2Fpasswd", "0123456789abcde%00", "-123456789abcdef"])
def test_unknown_or_malformed_alert_ids_are_404(admin, alert_id):
    for suffix in ("", "/around", "/around.csv"):
        r = admin.get(f"/alerts/{alert_id}{suffix}")
        assert r.status_code == 404, (alert_id, suffix)
        assert "No such alert" in r.text or "%2F" in alert_id        # a slash matches no route


def test_an_upper_case_id_is_not_an_alias(admin, archive_dir):
    a = all_alerts(archive_dir)[0]["id"]
    assert admin.get(f"/alerts/{a}").status_code == 200
    if a.upper() != a:
        assert admin.get(f"/alerts/{a.upper()}").status_code == 404


@pytest.mark.parametrize("query_string, field, message", [
    ("filter=tcp+and+prt+80", "filter", "Filter error at column 9"),
    ("filter=tcp+and+(", "filter", "Filter error at column 10"),
    ("filter=%00", "filter", "Filter error at column 1"),
    ("filter=sid+99999999999999999999", "filter", "expected a sid number"),
    ("filter=port+70000", "filter", "Filter error"),
    ("filter=" + "a" * 2001, "filter", "too long (at most 2000 characters)"),
    ("filter=" + "(" * 500 + "tcp" + ")" * 500, "filter", "Filter error"),
    ("t=yesterday", "t", "Time range error at column 1"),
    ("t=x-1h", "t", "without the x or n prefix"),
    ("t=n-1h", "t", "without the x or n prefix"),
    ("t=99999999999999999999", "t", "a time out of range"),
    ("t=-1h%2B99999999h", "t", "a time out of range"),
    ("t=-99999999y", "t", "a time out of range"),
    ("t=" + "1" * 201, "t", "too long"),
    ("sid=abc", "sid", "Signature error: must be a whole number from 1 to 4294967295"),
    ("sid=0", "sid", "must be a whole number"),
    ("sid=-5", "sid", "must be a whole number"),
    ("sid=4294967296", "sid", "must be a whole number"),
    ("sid=%EF%BC%91", "sid", "must be a whole number"),                     # fullwidth 1
    ("sid=" + "9" * 40, "sid", "too long"),
    ("sid=1e3", "sid", "must be a whole number"),
    ("priority=high", "priority", "Priority error: must be a whole number from 1 to 255"),
    ("priority=256", "priority", "must be a whole number"),
    ("priority=99999", "priority", "must be a whole number"),
    ("priority=" + "9" * 21, "priority", "too long"),
    ("host=not-an-address", "host", "Host error: not an IP address or network"),
    ("host=10.0.0.0%2F33", "host", "not an IP address or network"),
    ("host=" + "a" * 101, "host", "too long"),
    ("ids=0123456789abcdeg", "ids", "Alert list error: must be up to 50 alert ids"),
    ("ids=" + ",".join(f"{i:016x}" for i in range(51)), "ids", "must be up to 50 alert ids"),
    ("ids=0123456789abcdef,,", "ids", "must be up to 50"),
    ("ids=0123456789ABCDEF", "ids", "must be up to 50"),
    ("page=0", "page", "Page error: must be a whole number from 1 to 2000"),
    ("page=abc", "page", "must be a whole number"),
    ("page=99999999999999999999", "page", "must be a whole number"),
])
def test_bad_input_gives_the_form_back_with_a_message(admin, query_string, field, message):
    r = admin.get(f"/alerts?{query_string}")
    assert r.status_code == 400
    error = re.search(r'<div class="error" role="alert" id="alerts-error">(.*?)</div>', r.text, re.S)
    assert error and message in error.group(1).replace("&#39;", "'"), r.text
    assert '<form method="get" action="/alerts"' in r.text            # the form comes back
    if field not in ("page", "ids"):
        assert re.search(rf'name="{field}" value="[^"]*"[^>]*aria-invalid="true"', r.text), field
    assert "<table" not in r.text


def test_a_filter_error_points_at_its_column(admin):
    r = admin.get("/alerts?t=&filter=" + urllib.parse.quote("udp and prt 53"))
    assert r.status_code == 400
    assert "udp and prt 53\n        ^</pre>" in r.text


def test_huge_time_ranges_are_refused_on_the_search_page_too(admin):
    for t in ("99999999999999999999", "1-99999999999999999999", "9999/12/31%2B1y"):
        r = admin.get(f"/search?filter=&t={t}")
        assert r.status_code == 400 and "a time out of range" in r.text, t
        assert admin.get(f"/search/download/csv?filter=&t={t}").status_code == 400


@pytest.mark.parametrize("s", ["0", "86401", "-5", "abc", "1.5", "99999999999999999999", "%EF%BC%95"])
def test_around_refuses_bad_seconds(admin, archive_dir, s):
    a = all_alerts(archive_dir)[0]["id"]
    for suffix in ("around", "around.csv"):
        r = admin.get(f"/alerts/{a}/{suffix}?s={s}")
        assert r.status_code == 400 and "s: must be a whole number of seconds from 1 to 86400" in r.text


def test_around_refuses_bad_pages(admin, archive_dir):
    a = all_alerts(archive_dir)[0]["id"]
    for page in ("0", "x", "99999999"):
        assert admin.get(f"/alerts/{a}/around?page={page}").status_code == 400


def test_query_time_limit(admin, app, monkeypatch):
    monkeypatch.setattr(query, "PROGRESS_STEPS", 1)
    app.config["QUERY_TIME_LIMIT"] = 0.0
    r = admin.get("/alerts?t=")
    assert r.status_code == 503 and "took longer than 0 s" in r.text
    assert admin.get("/").status_code == 200                 # the dashboard still answers


# --- the alerts page -----------------------------------------------------------------------------

def test_alerts_page_lists_every_field_in_time_order(admin, archive_dir, capture_sessions):
    r = admin.get("/alerts?t=")
    assert r.status_code == 200
    expected = all_alerts(archive_dir)
    rows = table_rows(r.text, "alerts")
    assert len(rows) == len(expected) == 7
    assert f">{len(expected)} alerts<" in r.text
    http = capture_sessions["http"]
    linked = {a["id"]: len(alerts.sessions_of(archive_dir, a)) for a in expected}
    for row, a in zip(rows, expected):
        time_, prio, sig, msg, proto, src, dst, sessions, link = (text_of(c) for c in row)
        assert time_ == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["time"]))
        assert prio == (str(a["priority"]) if a["priority"] is not None else "–")
        assert sig == f"{a['gid']}:{a['sid']}:{a['rev']}"
        assert proto == {6: "tcp", 17: "udp"}[a["proto"]]
        assert src == f"{a['saddr']}:{a['sport']}" and dst == f"{a['daddr']}:{a['dport']}"
        assert int(sessions) == linked[a["id"]]
        assert f'href="/alerts/{a["id"]}"' in row[8] and link == "details"
    assert [a["time"] for a in expected] == sorted(a["time"] for a in expected)
    by_id = {a["id"]: a for a in expected}
    xss = next(a for a in expected if a["sid"] == 2100498)
    assert linked[xss["id"]] == 1 and by_id[xss["id"]]["saddr"] == http["daddr"]
    assert linked[next(a["id"] for a in expected if a["sid"] == 2200003)] == 0   # another Community ID
    assert linked[next(a["id"] for a in expected if a["gid"] == 138)] == 0


def test_counts_per_signature_link_to_that_signature(admin, archive_dir):
    r = admin.get("/alerts?t=&priority=3")
    sigs = table_rows(r.text, "signatures")
    got = [(text_of(c[0]), int(text_of(c[2]))) for c in sigs]
    want = {}
    for a in all_alerts(archive_dir):
        if a["priority"] is not None and a["priority"] <= 3:
            key = f"{a['gid']}:{a['sid']}:{a['rev']}"
            want[key] = want.get(key, 0) + 1
    assert dict(got) == want and [n for _, n in got] == sorted(want.values(), reverse=True)
    link = re.search(r'href="(/alerts\?[^"]*sid=2013504[^"]*)"', sigs[0][0] + sigs[1][0]).group(1)
    narrowed = admin.get(link.replace("&amp;", "&"))
    assert narrowed.status_code == 200
    assert 'name="sid" value="2013504"' in narrowed.text and 'name="priority" value="3"' in narrowed.text
    rows = table_rows(narrowed.text, "alerts")
    assert len(rows) == 2 and all(text_of(x[2]) == "1:2013504:1" for x in rows)


@pytest.mark.parametrize("query_string, keep", [
    ("sid=2027863", lambda a: a["sid"] == 2027863),
    ("priority=1", lambda a: a["priority"] == 1),
    ("priority=2", lambda a: a["priority"] is not None and a["priority"] <= 2),
    ("host=145.254.160.237", lambda a: "145.254.160.237" in (a["saddr"], a["daddr"])),
    ("host=10.0.0.0%2F8", lambda a: a["saddr"].startswith("10.") or a["daddr"].startswith("10.")),
    ("host=192.0.2.7&sid=524", lambda a: a["sid"] == 524),
    ("filter=udp", lambda a: a["proto"] == 17),
    ("filter=dst+port+80", lambda a: a["dport"] == 80),
    ("filter=tcp+and+not+sid+2013504", lambda a: a["proto"] == 6 and a["sid"] != 2013504),
    ("filter=gid+138", lambda a: a["gid"] == 138),
    ("filter=net+224.0.0.0%2F4", lambda a: a["daddr"] == "224.0.0.251"),
    ("filter=tcp&sid=2100498&priority=1&host=65.208.228.223", lambda a: a["sid"] == 2100498),
])
def test_selection(admin, archive_dir, query_string, keep):
    r = admin.get(f"/alerts?t=&{query_string}")
    assert r.status_code == 200
    want = [a for a in all_alerts(archive_dir) if keep(a)]
    assert want
    rows = table_rows(r.text, "alerts")
    assert [re.search(r'href="/alerts/([0-9a-f]{16})"', x[8]).group(1) for x in rows] == [a["id"] for a in want]
    assert sum(int(text_of(x[2])) for x in table_rows(r.text, "signatures")) == len(want)


def test_time_range(admin, archive_dir, capture_sessions):
    http = capture_sessions["http"]
    assert "value=\"-1h\"" in admin.get("/alerts").text                  # the default: the last hour
    assert ">0 alerts<" in admin.get("/alerts").text                     # the captures are old
    span = f"{int(http['stime'])}-{int(http['stime']) + 60}"
    rows = table_rows(admin.get(f"/alerts?t={span}").text, "alerts")
    want = [a for a in all_alerts(archive_dir) if int(http["stime"]) <= a["time"] <= int(http["stime"]) + 60]
    assert len(rows) == len(want) == 5                 # not the mDNS one (2014), nor two hours later
    rows = table_rows(admin.get(f"/alerts?t={int(http['stime'])}%2B1m").text, "alerts")
    assert len(rows) == 5
    rows = table_rows(admin.get(f"/alerts?t=c{span}").text, "alerts")       # c: the same for a moment
    assert len(rows) == 5


def test_paging(admin, app, archive_dir, capture_sessions):
    dns = capture_sessions["all_dns"]
    alerts.import_alerts(archive_dir, [
        make_alert(100 + i, s["stime"], 2210000 + i % 3, f"rule {i}", s["proto"], s["saddr"], s["sport"],
                   s["daddr"], s["dport"]) for i, s in enumerate(dns[:40])])
    app.config["PAGE_SIZE"] = 7
    want = [a["id"] for a in alerts.list_alerts(archive_dir)]
    assert len(want) == 47
    seen, page = [], 1
    while True:
        r = admin.get(f"/alerts?t=&page={page}")
        assert r.status_code == 200
        ids = re.findall(r'href="/alerts/([0-9a-f]{16})">details', r.text)
        seen += ids
        assert ('rel="prev"' in r.text) == (page > 1)
        if 'rel="next"' not in r.text:
            break
        assert len(ids) == 7 and f"page={page + 1}" in r.text
        page += 1
    assert seen == want and page == 7
    beyond = admin.get("/alerts?t=&page=50")
    assert beyond.status_code == 200 and "no alerts" in beyond.text and 'rel="next"' not in beyond.text
    assert admin.get(f"/alerts?t=&page={100_000 // 7}").status_code == 200
    assert admin.get(f"/alerts?t=&page={100_000 // 7 + 1}").status_code == 400
    # the links keep the selection
    r = admin.get("/alerts?t=&sid=2210001&page=1")
    assert "sid=2210001" in re.search(r'<a href="([^"]+)" rel="next"', r.text).group(1)


# --- hostile messages --------------------------------------------------------------------------

def test_alert_text_from_outsiders_is_escaped_everywhere(admin, archive_dir, capture_sessions):
    xss = by_sid(archive_dir, 2100498)[0]
    alerts.import_alerts(archive_dir, [make_alert(50, time.time() - 60, 2100499, XSS_MSG, 6, "192.0.2.1",
                                                  1, "192.0.2.2", 2)])
    http = capture_sessions["http"]
    pages = {"list": admin.get("/alerts?t="), "detail": admin.get(f"/alerts/{xss['id']}"),
             "around": admin.get(f"/alerts/{xss['id']}/around"), "dashboard": admin.get("/"),
             "search": admin.get("/search?t=&filter=" + urllib.parse.quote(f"port {http['sport']}"))}
    for name, r in pages.items():
        assert r.status_code == 200, name
        assert "<script>alert" not in r.text and "<img src=x" not in r.text, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text, name
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert " style=" not in r.text and "<script>" not in r.text, name     # nothing inline
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in pages["detail"].text


# --- one alert -----------------------------------------------------------------------------------

def test_alert_detail_shows_every_field_and_its_sessions(admin, archive_dir, capture_sessions):
    a = by_sid(archive_dir, 2100498)[0]
    http = capture_sessions["http"]
    r = admin.get(f"/alerts/{a['id']}")
    assert r.status_code == 200
    fields = dict((text_of(k), text_of(v)) for k, v in re.findall(
        r"<div><dt>(.*?)</dt><dd>(.*?)</dd></div>", r.text.split('id="alert-fields"')[1].split("</dl>")[0], re.S))
    assert fields["Time"].endswith(f"{a['time']:.6f}")
    assert fields["Signature gid:sid:rev"] == "1:2100498:1"
    assert fields["Priority"] == "1" and fields["Protocol"] == "tcp 6"
    assert fields["Source"] == f"{http['daddr']}:{http['dport']}"
    assert fields["Destination"] == f"{http['saddr']}:{http['sport']}"
    assert fields["Community ID"] == http["community_id"]
    assert fields["Flow id"] == "1234567890123" and fields["Application"] == "http"
    assert fields["Action"] == "allowed" and fields["Imported from"] == "eve" and fields["Alert id"] == a["id"]
    sessions = table_rows(r.text.split('id="linked-sessions"')[1], "sessions")
    assert len(sessions) == 1
    assert [text_of(c) for c in sessions[0]][3:8] == [http["saddr"], str(http["sport"]), "->",
                                                     http["daddr"], str(http["dport"])]
    assert f'href="/alerts/{a["id"]}/around?s=900"' in r.text


def test_alert_without_a_community_id_or_sessions(admin, archive_dir):
    a = by_sid(archive_dir, 524)[0]
    r = admin.get(f"/alerts/{a['id']}")
    assert r.status_code == 200
    assert "Community ID" not in r.text and 'id="community-id"' not in r.text
    assert "no sessions" in r.text and ">–<" in r.text                   # no priority
    assert "192.0.2.7:4444" in r.text and "1:524:1" not in r.text and "138:524:1" in r.text


# --- the around view -----------------------------------------------------------------------------

def test_around_view_shows_both_hosts_sessions_and_marks_the_linked_one(admin, archive_dir, capture_sessions):
    a = by_sid(archive_dir, 2100498)[0]
    want = around_expected(archive_dir, a, 900)
    assert len(want) == 3                  # the capture's three sessions: all of 145.254.160.237
    r = admin.get(f"/alerts/{a['id']}/around")
    assert r.status_code == 200
    rows = table_rows(r.text, "sessions")
    assert [(text_of(c[3]), text_of(c[4])) for c in rows] == [(w["saddr"], str(w["sport"])) for w in want]
    linked = re.findall(r'<tr class="linked"><td>.*?</tr>', r.text, re.S)
    assert len(linked) == 1 and f">{capture_sessions['http']['sport']}<" in linked[0]
    # each row's alerts: the long HTTP session has two (a link to them), the Google one and the
    # DNS query one each (a link to the alert)
    badges = {text_of(c[4]): c[11] for c in rows}
    http = capture_sessions["http"]
    assert text_of(badges[str(http["sport"])]) == "2"
    assert text_of(badges[str(capture_sessions["google"]["sport"])]) == "1"
    assert text_of(badges[str(capture_sessions["dns"]["sport"])]) == "1"
    google = by_sid(archive_dir, 2013504)
    google_alert = next(x for x in google if x["sport"] == capture_sessions["google"]["sport"])
    assert f'href="/alerts/{google_alert["id"]}"' in badges[str(capture_sessions["google"]["sport"])]
    near = around_expected(archive_dir, a, 1)        # the Google session ended 0.5 s before the alert
    assert [w["sport"] for w in near] == [http["sport"], capture_sessions["google"]["sport"]]
    one = admin.get(f"/alerts/{a['id']}/around?s=1")
    assert [text_of(c[4]) for c in table_rows(one.text, "sessions")] == [str(w["sport"]) for w in near]


def test_around_view_pages(admin, app, archive_dir, capture_sessions):
    q = next(x for x in capture_sessions["all_dns"] if x["daddr"] == "10.0.0.138")
    alerts.import_alerts(archive_dir, [make_alert(300, q["stime"], 2027864, "ET DNS query", 17, q["saddr"],
                                                  q["sport"], q["daddr"], q["dport"])])
    a = by_sid(archive_dir, 2027864)[0]
    want = around_expected(archive_dir, a, 86400)
    assert len(want) > 100
    app.config["PAGE_SIZE"] = 4
    seen, page = [], 1
    while True:
        r = admin.get(f"/alerts/{a['id']}/around?s=86400&page={page}")
        assert r.status_code == 200
        seen += [text_of(c[0]) for c in table_rows(r.text, "sessions") if text_of(c[0]) != "no sessions"]
        if 'rel="next"' not in r.text:
            break
        assert "s=86400" in re.search(r'<a href="([^"]+)" rel="next"', r.text).group(1)
        page += 1
    assert len(seen) == len(want) and page == -(-len(want) // 4)


@pytest.mark.parametrize("seconds", [900, 1, 86400])
def test_around_csv_is_the_result_with_the_search_columns(admin, archive_dir, seconds):
    a = by_sid(archive_dir, 2100498)[0]
    r = admin.get(f"/alerts/{a['id']}/around.csv?s={seconds}")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == f'attachment; filename="flowtap-alert-{a["id"]}-around-{seconds}s.csv"'
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0] == list(archive.FLOW_NAMES)
    search_csv = list(csv.reader(io.StringIO(admin.get("/search/download/csv?t=&filter=").text)))
    assert search_csv[0] == table[0]                                   # search's columns and labels
    want = around_expected(archive_dir, a, seconds)
    names = list(archive.FLOW_NAMES)
    got = [dict(zip(names, row)) for row in table[1:]]
    assert [(g["saddr"], int(g["sport"]), float(g["stime"])) for g in got] == \
           [(w["saddr"], w["sport"], w["stime"]) for w in want]
    assert [g for g in got if g in [dict(zip(names, row)) for row in search_csv[1:]]] == got
    assert admin.get(f"/alerts/{a['id']}/around.csv").status_code == 200            # default 900 s


def test_search_csv_of_linked_sessions(admin, archive_dir, capture_sessions):
    """`alert` and `sid N` in a search download (each archive read on its own connection)."""
    r = admin.get("/search/download/csv?t=&filter=alert")
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    s = capture_sessions
    assert sorted(int(x["sport"]) for x in rows) == sorted(
        [s["http"]["sport"], s["google"]["sport"], s["dns"]["sport"], s["mdns"]["sport"]])
    rows = list(csv.DictReader(io.StringIO(admin.get("/search/download/csv?t=&filter=sid+2013504").text)))
    assert sorted(int(x["sport"]) for x in rows) == sorted([s["http"]["sport"], s["google"]["sport"]])


# --- session tables and the dashboard ----------------------------------------------------------

def test_search_rows_show_their_alerts(admin, archive_dir, capture_sessions):
    r = admin.get("/search?t=&filter=&sort=stime&order=asc")
    assert r.status_code == 200 and '<th class="num">Alerts</th>' in r.text
    rows = table_rows(r.text, "sessions")
    assert len(rows) == 50 and all(len(row) == 12 for row in rows)
    badges = {(text_of(c[3]), text_of(c[4])): c[11] for c in rows if c[11]}
    s = capture_sessions
    assert set(badges) == {(s[k]["saddr"], str(s[k]["sport"])) for k in ("http", "google", "dns")}
    # two alerts: a link to the alerts page narrowed to the session, which lists exactly them
    link = re.search(r'href="([^"]+)"', badges[(s["http"]["saddr"], str(s["http"]["sport"]))]).group(1)
    assert link.startswith("/alerts?ids=")
    narrowed = admin.get(html.unescape(link))
    assert narrowed.status_code == 200 and "The 2 alerts of one session" in narrowed.text
    ids = re.findall(r'href="/alerts/([0-9a-f]{16})">details', narrowed.text)
    linked = alerts.alerts_for_records(archive_dir, [s["http"]])[0]
    assert ids == [x["id"] for x in sorted(linked, key=lambda x: x["time"])] and len(ids) == 2
    assert [text_of(c[0]) for c in table_rows(narrowed.text, "signatures")] == ["1:2013504:1", "1:2100498:1"]
    title = re.search(r'title="([^"]+)"', badges[(s["http"]["saddr"], str(s["http"]["sport"]))]).group(1)
    assert "ET POLICY GNU/Linux APT User-Agent" in title
    # the mDNS session is beyond the first page: alerts are linked for the page's rows only
    later = admin.get("/search?t=&filter=" + urllib.parse.quote("dst host 224.0.0.251"))
    assert len([c for c in table_rows(later.text, "sessions") if c[11]]) == 1
    none = admin.get("/search?t=&filter=" + urllib.parse.quote("host 10.0.0.138"))
    assert not [c for c in table_rows(none.text, "sessions") if c[11]]


def test_dashboard_shows_the_last_hours_alerts(admin, archive_dir):
    page = admin.get("/")
    assert page.status_code == 200 and 'id="alerts-hour"' in page.text
    assert ">0 alerts</a>" in page.text                       # the imported alerts are old
    now = time.time()
    recent = [make_alert(200 + i, now - 30 - i, 2400000 + i % 7, f"recent rule {i % 7}", 6, "192.0.2.10",
                         40000 + i, "198.51.100.20", 443) for i in range(28)]
    recent.append(make_alert(299, now - 5000, 2400000, "recent rule 0", 6, "192.0.2.10", 1, "198.51.100.20", 2))
    alerts.import_alerts(archive_dir, recent)
    page = admin.get("/")
    assert ">28 alerts</a>" in page.text and 'href="/alerts?t=-1h"' in page.text
    top = table_rows(page.text.split('id="dashboard-alerts"')[1], "signatures")
    assert len(top) == 5 and all(text_of(c[2]) == "4" for c in top)
    assert text_of(top[0][0]) == "1:2400000:1" and 'href="/alerts?t=-1h&amp;sid=2400000"' in top[0][0]
    listed = admin.get("/alerts?t=-1h&sid=2400000")
    assert len(table_rows(listed.text, "alerts")) == 4


def test_nav_has_alerts(admin):
    page = admin.get("/alerts").text
    assert '<a href="/alerts" aria-current="page">Alerts</a>' in page
    assert '<a href="/alerts">Alerts</a>' in admin.get("/search").text


def test_pages_leave_the_archive_directory_as_it_was(admin, archive_dir):
    before = files_state(archive_dir)
    assert any(n.startswith("alerts-") for n in before) and any(n.startswith("flows-") for n in before)
    a = by_sid(archive_dir, 2100498)[0]
    for url in ["/", "/alerts", "/alerts?t=", "/alerts?t=&sid=1", f"/alerts/{a['id']}",
                f"/alerts/{a['id']}/around", f"/alerts/{a['id']}/around.csv", "/search?t=&filter=alert",
                "/search/download/csv?t=&filter=sid+2013504", "/alerts/0123456789abcdef"]:
        admin.get(url)
    assert files_state(archive_dir) == before


def test_no_alert_store_yet(admin, archive_dir):
    for p in archive_dir.glob("alerts-*.sqlite"):
        p.unlink()
    assert ">0 alerts<" in admin.get("/alerts?t=").text
    assert "no alerts" in admin.get("/alerts?t=").text
    assert admin.get("/").status_code == 200
    r = admin.get("/search?t=&filter=")
    assert r.status_code == 200 and not [c for c in table_rows(r.text, "sessions") if c[11]]
    assert admin.get("/alerts/0123456789abcdef").status_code == 404


def test_listing_alerts_by_id(admin, archive_dir):
    two = [a["id"] for a in all_alerts(archive_dir)[:2]]
    r = admin.get(f"/alerts?ids={two[1]},{two[0]},{two[1]},0123456789abcdef")   # unknown ids: not listed
    assert r.status_code == 200 and "The 2 alerts of one session" in r.text
    assert re.findall(r'href="/alerts/([0-9a-f]{16})">details', r.text) == two


def test_a_damaged_alert_file_is_named_not_a_traceback(admin, archive_dir):
    xss = by_sid(archive_dir, 2100498)[0]
    bad = archive_dir / "alerts-20040513T090000Z.sqlite"             # an hour the list reads
    bad.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    r = admin.get("/alerts?t=")
    assert r.status_code == 500 and "the alert store cannot be read" in r.text and bad.name in r.text
    assert "Traceback" not in r.text and '<form method="get" action="/alerts"' in r.text
    assert admin.get("/").status_code == 200
    assert admin.get(f"/alerts/{xss['id']}").status_code == 200       # one alert: the others are read
    assert admin.get("/search?t=&filter=").status_code == 200


def test_session_rows_without_their_alerts_when_linking_fails(admin, monkeypatch):
    def slow(*_a, **_k):
        raise query.QueryTimeout("the query ran past its time limit")
    monkeypatch.setattr(alerts, "alerts_for_records", slow)
    r = admin.get("/search?t=&filter=tcp")
    assert r.status_code == 200 and "could not be linked in time" in r.text
    assert '<th class="num">Alerts</th>' not in r.text and table_rows(r.text, "sessions")
