"""The search page (issue 15) through Flask's test client over real recorded archives, and the real
`flowtap web` under waitress serving the deepest page of a 480,000-record archive set in bounded
memory: page numbers, time ranges and fields from outside, the archives' span and the default
range, the result count, the column chooser, a record's detail page, click-to-filter links, the
gzip downloads and the page's own script and style sheet."""
from __future__ import annotations

import csv
import gzip
import html
import io
import json
import re
import sqlite3
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from appliance import archive
from appliance.web import search
from test_web import admin, all_records, app, client, config_path, open_archive, recorded  # noqa: F401

BENCH = Path(__file__).resolve().parent.parent / "bench"


def cells(text: str) -> list[list[str]]:
    """The result table's rows as the text of their cells."""
    body = text.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def header(text: str) -> list[str]:
    head = text.split("<thead>", 1)[1].split("</thead>", 1)[0]
    return [html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
            for c in re.findall(r"<th[^>]*>(.*?)</th>", head, re.S)]


def links(text: str, cls: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(rf'<a class="{cls}" href="([^"]+)"', text)]


def query_of(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query, keep_blank_values=True))


def archive_span(archive_dir: Path) -> tuple[float, float]:
    infos = [archive.read_info(archive.open_readonly(p)) for p in archive.list_archives(archive_dir)]
    return min(i["first_stime"] for i in infos), max(i["last_ltime"] for i in infos)


# --- page numbers -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["%C2%B2", "%D9%A3", "%EF%BC%91", "+1", "1e3", "%201", "-1", "0", "1.0"])
def test_page_numbers_are_ascii_digits_only(admin, raw):
    """'²'.isdigit() is True and int('²') raises: it was a 500; every form of not-a-page is a 400
    with a one-line reason."""
    r = admin.get(f"/search?t=&filter=&page={raw}")
    assert r.status_code == 400
    assert re.search(r'<p class="error">page: must be a whole number from 1 to \d+\.</p>', r.text)


def test_a_page_past_the_end_is_empty_and_leads_back(admin, archive_dir, app):
    app.config["PAGE_SIZE"] = 20
    n = all_records(archive_dir, "proto = 17")
    last = -(-n // 20)
    r = admin.get(f"/search?t=&filter=udp&sort=bytes&page={last + 3}")
    assert r.status_code == 200 and cells(r.text) == [["no sessions"]]
    hint = re.search(r'<p class="note hint" id="past-end">(.*?)</p>', r.text, re.S).group(1)
    assert "No more results" in hint
    back = re.findall(r'href="([^"]+)">(page \d+|first page)</a>', hint)
    assert [(query_of(html.unescape(u))["page"], label) for u, label in back] == \
        [(str(last), f"page {last}"), ("1", "first page")]
    final = admin.get(html.unescape(back[0][0]))
    assert len(cells(final.text)) == n - 20 * (last - 1) and 'rel="next"' not in final.text


def test_a_page_beyond_the_cap_asks_for_a_narrower_search(admin, app):
    deepest = search.MAX_ROWS // app.config["PAGE_SIZE"]
    assert admin.get(f"/search?t=&filter=&page={deepest}").status_code == 200
    r = admin.get(f"/search?t=&filter=&page={deepest + 1}")
    assert r.status_code == 400
    assert re.search(r'<p class="error">page: deep pages need a narrower search: .* \(page '
                     rf'{deepest}\)\. Narrow the time range or the filter, or download the whole '
                     r'result\.</p>', r.text)


def test_the_deepest_page_offers_no_next_link(admin, app, archive_dir):
    """Next on the deepest page would be refused: the page says why instead."""
    app.config["PAGE_SIZE"] = 1
    app.config["QUERY_TIME_LIMIT"] = 60.0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search, "MAX_ROWS", 3)
        r = admin.get("/search?t=&filter=&page=3")
    assert len(cells(r.text)) == 1 and 'rel="next"' not in r.text and 'id="deepest"' in r.text


# --- time ranges ------------------------------------------------------------------------------

@pytest.mark.parametrize("span", ["1970/01/01-9999/12/31", "-99999999d", "0001/01/01-0001/01/02",
                                  "9999/12/31", "-99999999999999999999s"])
@pytest.mark.parametrize("url", ["/search", "/search/download/csv", "/search/download/csv.gz"])
def test_time_ranges_beyond_the_calendar_are_400_with_the_reason(admin, url, span):
    r = admin.get(f"{url}?" + urllib.parse.urlencode({"t": span, "filter": ""}))
    assert r.status_code == 400
    if url == "/search":
        assert re.search(r'<div class="error" role="alert" id="search-error">\s*<p>Time range error'
                         r'( at column \d+)?: [^<\n]+</p>', r.text)
    else:
        assert re.search(r'<p class="error">t: [^<\n]+</p>', r.text)       # the styled error page


def test_the_page_shows_the_archives_span_and_defaults_to_the_last_hour_of_the_data(admin, archive_dir, utc):
    first, last = archive_span(archive_dir)
    page = admin.get("/search").text
    assert re.search(rf"The archives hold records from <time>{search.clock(first)}</time>\s+to "
                     rf"<time>{search.clock(last)}</time> UTC\.", page)
    assert "All times on this page are in UTC" in page
    end = int(last) + 1
    t = f"{time.strftime('%Y/%m/%d.%H:%M:%S', time.gmtime(end - 3600))}-" \
        f"{time.strftime('%Y/%m/%d.%H:%M:%S', time.gmtime(end))}"
    assert f'value="{t}"' in page
    assert "more than an hour ago: the time range is the last hour of the data" in page
    rows = cells(admin.get("/search?" + urllib.parse.urlencode({"t": t, "filter": ""})).text)
    assert rows and rows != [["no sessions"]]


def test_recent_data_keeps_the_clock_s_last_hour(admin, archive_dir, make_record):
    w = open_archive(archive_dir, make_record)
    try:
        page = admin.get("/search").text
        assert 'value="-1h"' in page and 'id="default-range"' not in page
    finally:
        w.close()


def test_a_range_outside_the_archives_says_so(admin, utc):
    r = admin.get("/search?t=2030/01/01-2030/01/02&filter=")
    assert r.status_code == 200 and cells(r.text) == [["no sessions"]]
    assert "The time range lies outside the archives, which hold" in r.text
    assert 'id="outside-hint"' not in admin.get("/search?t=2000/01/01-2030/01/02&filter=").text
    assert 'id="outside-hint"' not in admin.get("/search?t=&filter=").text


def test_times_are_labelled_with_their_zone(admin, utc):
    r = admin.get("/search?t=&filter=&fields=stime,ltime,saddr")
    assert header(r.text)[:3] == ["stime (UTC) ▼", "ltime (UTC)", "saddr"]


# --- the result count -------------------------------------------------------------------------

def test_the_result_count_and_the_rows_shown(admin, archive_dir, app):
    app.config["PAGE_SIZE"] = 20
    n = all_records(archive_dir, "proto = 17")
    assert n > 40
    for page_no, rows in ((1, "1–20"), (2, "21–40")):
        r = admin.get(f"/search?t=&filter=udp&page={page_no}")
        count = re.search(r'<p class="count" id="result-count">(.*?)</p>', r.text).group(1)
        assert count == f"{n:,} sessions; rows {rows}."


def test_a_count_past_its_time_limit_is_a_lower_bound(admin, archive_dir, monkeypatch):
    from appliance import query
    monkeypatch.setattr(query, "PROGRESS_STEPS", 1)
    monkeypatch.setattr(search, "COUNT_TIME_LIMIT", 0.0)
    r = admin.get("/search?t=&filter=")
    assert r.status_code == 200 and len(cells(r.text)) == 50
    count = re.search(r'<p class="count" id="result-count">(.*?)</p>', r.text).group(1)
    assert re.fullmatch(r"At least ([\d,]+) sessions \(the count stopped at its time limit\); "
                        r"rows 1–50\.", count)
    assert int(re.search(r"[\d,]+", count).group(0).replace(",", "")) >= 51


# --- deep pages: the same rows, one archive at a time -----------------------------------------

@pytest.fixture
def many(tmp_path):
    """A data directory of three archives of 3,000 records each, byte counts at random."""
    sys.path.insert(0, str(BENCH))
    try:
        import web_deep_page
    finally:
        sys.path.remove(str(BENCH))
    data = tmp_path / "many"
    web_deep_page.build(data, 3, 3000)
    return data


def test_pages_of_many_archives_are_the_global_order(many, config_path, runtime_dir):
    """Every page of a result over several archives is its slice of the whole result in order (the
    merge of the archives' sort keys), deep pages included, and ties (sort=proto: every row ties)
    are broken alike on every page: each record shows once."""
    from appliance.web import create_app
    from test_web import setup_password
    web = create_app(config_path=config_path, data_dir=str(many), runtime_dir=str(runtime_dir),
                     settings={"TESTING": True, "PAGE_SIZE": 100})
    user = web.test_client()
    setup_password(user, web)
    sizes = []
    for p in archive.list_archives(many / "archive"):
        sizes += [r[0] for r in archive.open_readonly(p).execute("SELECT sbytes + dbytes FROM flows")]
    sizes.sort(reverse=True)
    for page_no in (1, 2, 45, 90):
        r = user.get(f"/search?t=&filter=&sort=bytes&page={page_no}&fields=bytes")
        got = [int(row[0].replace(",", "")) for row in cells(r.text)]
        assert got == sizes[(page_no - 1) * 100:page_no * 100]
    seen = []
    for page_no in range(1, 92):
        r = user.get(f"/search?t=&filter=&sort=proto&order=asc&page={page_no}")
        seen += [urllib.parse.urlsplit(u).path for u in links(r.text, "detail")]
    assert len(seen) == len(set(seen)) == 9000


@pytest.mark.slow
def test_the_deepest_page_of_a_big_archive_set_stays_under_150_mb(tmp_path):
    """The real `flowtap web`: page=2000&sort=bytes over 4 archives × 120,000 records. Before the
    fix the page held 100,000 rows per archive as dicts (peak 1153 MiB, 630 MiB held after)."""
    sys.path.insert(0, str(BENCH))
    try:
        import web_deep_page
    finally:
        sys.path.remove(str(BENCH))
    web_deep_page.build(tmp_path / "data", 4, 120_000)
    server = web_deep_page.serve(tmp_path / "data", tmp_path)
    try:
        m = web_deep_page.measure(server)
    finally:
        server.stop()
    print(m)
    assert m["status"] == 200 and m["rows"] >= 50
    assert m["hwm_after"] < 150, m
    if m["reset"]:
        assert m["hwm_after"] - m["hwm_before"] < 40, m


# --- columns ----------------------------------------------------------------------------------

def test_the_field_chooser_sets_the_columns(admin, archive_dir):
    r = admin.get("/search?t=&filter=udp&fields=stime,saddr,sbytes,community_id")
    assert r.status_code == 200
    assert header(r.text) == ["stime (UTC) ▼", "saddr", "sbytes", "community_id", "Alerts"]
    rows = cells(r.text)
    assert rows and all(len(row) == 5 for row in rows)
    assert all(row[3].startswith("1:") for row in rows)
    # the form's checkboxes send the names one by one; the page keeps them on its links
    r = admin.get("/search?t=&filter=udp&fields=daddr&fields=dport")
    assert header(r.text)[:2] == ["daddr", "dport"]
    nexts = re.findall(r'href="([^"]+)" rel="next"', r.text)
    assert query_of(html.unescape(nexts[0]))["fields"] == "daddr,dport"
    assert admin.get("/search?t=&filter=udp").text.count('type="checkbox" name="fields"') == len(search.NAMES)


@pytest.mark.parametrize("fields, status", [
    ("rowid", 400), ("stime,flows", 400), ("stime;drop table flows", 400),
    ("<script>alert(1)</script>", 400), ("stime," * 400, 400), (",,", 200), ("stime,stime", 200)])
def test_fields_are_checked_against_the_record_fields(admin, fields, status):
    r = admin.get("/search?" + urllib.parse.urlencode({"t": "", "filter": "", "fields": fields}))
    assert r.status_code == status
    assert "<script>alert" not in r.text
    if status == 400:
        assert re.search(r'<p class="error">fields: [^<\n]+</p>', r.text)


def test_downloads_keep_every_field(admin, archive_dir):
    r = admin.get("/search/download/csv?t=&filter=udp&fields=stime,saddr")
    table = list(csv.reader(io.StringIO(r.text)))
    assert table[0] == list(archive.FLOW_NAMES) and len(table) == all_records(archive_dir, "proto = 17") + 1


# --- a record's every field, and click-to-filter ----------------------------------------------

def test_a_row_leads_to_its_record_with_every_field(admin, archive_dir, utc):
    r = admin.get("/search?t=&filter=tcp&sort=bytes")
    url = links(r.text, "detail")[0]
    name, rid = urllib.parse.urlsplit(url).path.split("/")[-2:]
    detail = admin.get(url)
    assert detail.status_code == 200
    conn = archive.open_readonly(archive_dir / name)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM flows WHERE rowid = ?", (int(rid),)).fetchone()
    shown = dict(re.findall(r'<th scope="row">(\w+)</th><td>(.*?)</td>', detail.text, re.S))
    assert set(shown) == set(search.NAMES)
    text = {k: html.unescape(re.sub(r"<[^>]+>", "", v)).strip() for k, v in shown.items()}
    assert text["community_id"] == row["community_id"] and text["saddr"] == row["saddr"]
    assert text["bytes"] == f"{row['sbytes'] + row['dbytes']:,}"
    assert text["stime"].startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["stime"])))
    assert text["proto"] == "tcp" and text["sport"] == str(row["sport"])
    # the record page keeps the search: back to it, and its values refine it
    back = html.unescape(re.search(r'href="([^"]+)" id="back"', detail.text).group(1))
    assert query_of(back) == {"t": "", "filter": "tcp", "sort": "bytes", "order": "desc"}
    refine = {query_of(u)["filter"] for u in links(detail.text, "refine")}
    assert refine == {f"(tcp) and host {row['saddr']}", f"(tcp) and host {row['daddr']}",
                      f"(tcp) and port {row['sport']}", f"(tcp) and port {row['dport']}", "(tcp) and proto 6"}


@pytest.mark.parametrize("path, status", [
    ("{name}/0", 404), ("{name}/-1", 404), ("{name}/%EF%BC%91", 404), ("{name}/1e3", 404),
    ("{name}/99999999999999999999", 404), ("{name}/999999", 404), ("..%2F..%2Fetc%2Fpasswd/1", 404),
    ("secret.sqlite/1", 404), ("flows-20990101T000000Z.sqlite/1", 404), ("{name}/1", 200)])
def test_record_pages_take_listed_archives_and_real_rowids_only(admin, archive_dir, path, status):
    (archive_dir / "secret.sqlite").write_text("not an archive")
    name = archive.list_archives(archive_dir)[0].name
    assert admin.get("/search/record/" + path.format(name=name)).status_code == status


def test_click_to_filter_narrows_the_search(admin, archive_dir):
    r = admin.get("/search?t=&filter=udp&sort=bytes")
    first = r.text.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    host = [u for u in links(first, "refine") if "host" in query_of(u)["filter"]][0]
    flt = query_of(host)["filter"]
    assert re.fullmatch(r"\(udp\) and host [0-9a-f.:]+", flt)
    addr = flt.rsplit(" ", 1)[1]
    narrowed = cells(admin.get(host).text)
    assert narrowed and all(addr in (row[3], row[6]) and row[2] == "udp" for row in narrowed)
    assert len(narrowed) == min(50, all_records(archive_dir, f"proto = 17 AND '{addr}' IN (saddr, daddr)"))


def test_click_to_filter_links_are_escaped_and_bounded(admin, archive_dir, make_record):
    """A value that is not an address gets no link and is shown escaped; a filter already near
    its length limit gets no links (they would be refused)."""
    w = open_archive(archive_dir, make_record, n=3)
    try:
        conn = sqlite3.connect(w.current.path)
        conn.execute("UPDATE flows SET saddr = '\"><script>alert(1)</script>' WHERE rowid = 1")
        conn.commit()
        conn.close()
        r = admin.get("/search?t=-1h&filter=" + urllib.parse.quote("not udp"))
        assert r.status_code == 200 and "<script>alert(1)" not in r.text
        assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
        for u in links(r.text, "refine"):
            assert "script" not in query_of(u)["filter"]
        rest = " and not port 1" * ((search.MAX_FILTER - 10) // 15)
        long_filter = "not" + " " * (search.MAX_FILTER - 6 - len(rest)) + "udp" + rest
        assert len(long_filter) == search.MAX_FILTER
        r = admin.get("/search?" + urllib.parse.urlencode({"t": "-1h", "filter": long_filter}))
        assert cells(r.text) and links(r.text, "refine") == []
    finally:
        w.close()


# --- downloads --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_gzip_downloads_hold_the_same_bytes(admin, fmt):
    q = urllib.parse.urlencode({"t": "", "filter": "tcp"})
    plain = admin.get(f"/search/download/{fmt}?{q}")
    packed = admin.get(f"/search/download/{fmt}.gz?{q}")
    assert packed.status_code == 200 and packed.mimetype == "application/gzip"
    assert packed.headers["Content-Disposition"] == f'attachment; filename="flowtap-search.{fmt}.gz"'
    assert "Content-Encoding" not in packed.headers               # a .gz file, saved as it is
    assert gzip.decompress(packed.data) == plain.data and len(packed.data) < len(plain.data)
    if fmt == "jsonl":
        assert all(json.loads(line)["proto"] == 6 for line in plain.data.splitlines())
    page = admin.get(f"/search?{q}").text
    assert f'href="/search/download/{fmt}.gz?t=&amp;filter=tcp"' in page


# --- the page's script and style --------------------------------------------------------------

def test_the_page_loads_its_own_script_and_style_and_nothing_inline(admin):
    page = admin.get("/search?t=&filter=").text
    assert '<script src="/static/search.js" defer></script>' in page
    assert '<link rel="stylesheet" href="/static/search.css">' in page
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and not re.search(r"\son[a-z]+=", page)
    assert 'type="datetime-local" id="t-from"' in page and 'data-last="900"' in page
    for name in ("search.js", "search.css"):
        with admin.get(f"/static/{name}") as r:
            assert r.status_code == 200
    other = admin.get("/archives").text
    assert "search.js" not in other and "search.css" not in other


@pytest.mark.slow
def test_the_time_picker_and_the_column_chooser_in_a_browser(data_dir, tmp_path, utc):
    """search.js in headless Chromium under the page's CSP: the quick buttons and the two pickers
    write ra's syntax into the time field, and the checkboxes become one fields= list."""
    from test_web_browser import CHROMIUM, CHROMIUM_ARGS
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    from playwright.sync_api import sync_playwright
    sys.path.insert(0, str(BENCH))
    try:
        import web_deep_page
    finally:
        sys.path.remove(str(BENCH))
    first, last = archive_span(data_dir / "archive")
    server = web_deep_page.serve(data_dir, tmp_path)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.base + "/login")
                page.fill("input[name=password]", web_deep_page.PASSWORD)
                page.click("main button[type=submit]")
                page.wait_for_url(server.base + "/")
                page.goto(server.base + "/search")
                assert page.is_visible("#picker")
                default = page.input_value("#search-t")
                page.click("button[data-last='3600']")     # the data is old: its last hour
                assert page.input_value("#search-t") == default
                end = int(last) + 1
                assert page.input_value("#t-to") == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end))
                page.click("button[data-last='900']")
                ra = "%Y/%m/%d.%H:%M:%S"
                assert page.input_value("#search-t") == \
                    f"{time.strftime(ra, time.gmtime(end - 900))}-{time.strftime(ra, time.gmtime(end))}"
                page.click("button[data-last='all']")
                assert page.input_value("#search-t") == ""
                page.fill("#t-from", "2004-05-13T10:00:00")
                page.fill("#t-to", "2004-05-13T11:30:00")
                assert page.input_value("#search-t") == "2004/05/13.10:00:00-2004/05/13.11:30:00"
                page.click("#fields summary")
                page.uncheck("input[name=fields][value=dur]")
                page.check("input[name=fields][value=ltime]")
                page.click("main button[type=submit]")
                page.wait_for_load_state()
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
                assert q["t"] == ["2004/05/13.10:00:00-2004/05/13.11:30:00"]
                assert len(q["fields"]) == 1 and "ltime" in q["fields"][0].split(",")
                assert "dur" not in q["fields"][0].split(",")
                heads = page.locator("table.sessions thead th").all_text_contents()
                assert any(h.startswith("ltime (UTC)") for h in heads) and "dur" not in heads
                assert errors == []
            finally:
                browser.close()
    finally:
        server.stop()
