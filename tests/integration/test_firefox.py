"""Debian's Firefox ESR calls the SDES trunk through the gateway.

Firefox brings its own SDP and DTLS stack (NSS), unlike Chromium and aiortc.
playwright-core cannot drive Debian's Firefox, so the test starts
`firefox-esr --headless --no-remote --profile <fresh dir>` itself on a small
page (tests/integration/firefox/call.html) served by a thread of this test on
127.0.0.1 (a secure context). The page gets a login token in its URL, opens
the gateway's wss signaling, places the call with the fake microphone
(media.navigator.streams.fake), lets media flow, reads getStats() (packet
counts, inbound-rtp totalAudioEnergy for the energy of what it heard, the
transport's DTLS/SRTP ciphers), hangs up and POSTs its result back here.
The gateway's self-signed certificate (data_dir/tls-cert.pem) is imported
into the fresh profile with NSS certutil (libnss3-tools) so the wss
connection is trusted.

Artifacts (tests/artifacts/test_firefox_call/): result.json (the
measurements, the SDP offer and answer, the page's event log), firefox/
(profile's user.js, stdout/stderr with the page's console), gateway/ and
trunk/ as in the other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest

from conftest import BOTH_PORT_MODES, TRUNK_NUMBER
from harness import TONE_RMS_MIN, save_result, wait_until

pytestmark = pytest.mark.gateway

PAGE = Path(__file__).parent / "firefox" / "call.html"
ANSWER_PAGE = PAGE.parent / "answer.html"  # test_firefox_incoming_call
FIREFOX = os.environ.get("FIREFOX_BIN", "/usr/bin/firefox-esr")
MEDIA_MS = 6000

# A fresh profile: fake media devices without a prompt, autoplay allowed, and
# nothing that talks to the network on its own (updates, telemetry, safe
# browsing, captive portal and connectivity checks, remote settings...).
USER_JS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.identity.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-gmpopenh264.autoupdate": False,
    "media.gmp-widevinecdm.enabled": False,
    "devtools.console.stdout.content": True,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.update.disabledForTesting": True,
    "app.update.checkInstallTime": False,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    "app.shield.optoutstudies.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.proxy.type": 0,
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.downloads.remote.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.passwords.enabled": False,
    "browser.safebrowsing.provider.google.updateURL": "",
    "browser.safebrowsing.provider.google4.updateURL": "",
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "browser.safebrowsing.update.enabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.firstRunURL": "",
    "datareporting.usage.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.shutdownPingSender.enabled": False,
    "toolkit.telemetry.firstShutdownPing.enabled": False,
    "toolkit.telemetry.newProfilePing.enabled": False,
    "toolkit.telemetry.updatePing.enabled": False,
    "toolkit.telemetry.bhrPing.enabled": False,
    "toolkit.startup.max_resumed_crashes": -1,
    "browser.ping-centre.telemetry": False,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.telemetry": False,
    "browser.newtabpage.activity-stream.telemetry": False,
    "browser.newtabpage.activity-stream.feeds.topsites": False,
    "browser.newtabpage.activity-stream.feeds.section.topstories": False,
    "browser.newtabpage.activity-stream.showSponsored": False,
    "browser.newtabpage.activity-stream.showSponsoredTopSites": False,
    "browser.topsites.contile.enabled": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.tabs.warnOnClose": False,
    "browser.search.update": False,
    "browser.search.geoip.url": "",
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.contentblocking.report.lockwise.enabled": False,
    "browser.discovery.enabled": False,
    "extensions.update.enabled": False,
    "extensions.update.autoUpdateDefault": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "geo.provider.network.url": "",
    "geo.enabled": False,
    # honoured by release builds only with MOZ_REMOTE_SETTINGS_DEVTOOLS=1 in
    # the environment (set in Firefox.start); as geckodriver does
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "security.OCSP.enabled": 0,
    "security.certerrors.mitm.priming.enabled": False,
    "identity.fxaccounts.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "nimbus.enabled": False,
    "dom.push.enabled": False,
    "dom.push.connection.enabled": False,
    "privacy.sanitize.sanitizeOnShutdown": False,
}


def user_js(prefs: dict) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class PageServer:
    """Serves call.html and answer.html on 127.0.0.1 and collects what the
    page POSTs: /log (its progress events) and /result (the measurements)."""

    def __init__(self):
        self.events: list[dict] = []
        self.result: Optional[dict] = None
        self.got_result = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                if path in ("/call.html", "/answer.html"):
                    body = (PAGE.parent / path[1:]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                elif path == "/favicon.ico":
                    body = b""
                    self.send_response(204)
                else:
                    body = b"not found"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    data = json.loads(raw or b"null")
                except ValueError:
                    data = {"unparsed": raw[:2000].decode(errors="replace")}
                path = urllib.parse.urlsplit(self.path).path
                if path == "/log":
                    outer.events.append(data)
                elif path == "/result":
                    outer.result = data
                    outer.got_result.set()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="firefox-page", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Firefox:
    """firefox-esr, headless, in a fresh profile that trusts the gateway's
    certificate. Its own process group, ended by that group's id."""

    def __init__(self, workdir: Path, gateway_cert: Path):
        self.dir = workdir / "firefox"
        self.dir.mkdir(parents=True, exist_ok=True)
        # the profile lives outside the artifacts (it holds caches, an NSS
        # database...); user.js and the logs are kept
        self.profile = Path(tempfile.mkdtemp(prefix="gwt-firefox-profile-"))
        self.home = Path(tempfile.mkdtemp(prefix="gwt-firefox-home-"))
        self.gateway_cert = gateway_cert
        self.log_path = self.dir / "firefox.log"
        self.proc: Optional[subprocess.Popen] = None

    def prepare(self, page_origin: str):
        # Firefox gathers host candidates only for a page that captures a
        # real device or holds a persistent microphone/camera permission
        # (PeerConnectionImpl: default_address_only |=
        # !IsActivelyCapturingOrHasAPermission); the fake device does not
        # count, and the "default address" alone needs a default route, which
        # the test namespace lacks (ICE fails at once: "failed to find default
        # addresses"). So the page's origin gets the microphone permission,
        # through the permission manager's defaults file.
        perms = self.profile / "default-permissions"
        perms.write_text(f"origin\tmicrophone\t1\t{page_origin}\n")
        prefs = dict(USER_JS)
        prefs["permissions.manager.defaultsUrl"] = perms.as_uri()
        (self.profile / "user.js").write_text(user_js(prefs))
        shutil.copy(perms, self.dir / "default-permissions")
        shutil.copy(self.profile / "user.js", self.dir / "user.js")
        certutil = shutil.which("certutil")
        assert certutil, "certutil missing: apt-get install libnss3-tools (tests/run-all.sh does)"
        db = f"sql:{self.profile}"
        steps = [
            [certutil, "-N", "-d", db, "--empty-password"],
            [certutil, "-A", "-d", db, "-t", "CT,,", "-n", "webrtc-sip-gateway", "-i", str(self.gateway_cert)],
            [certutil, "-L", "-d", db],
        ]
        with open(self.dir / "certutil.log", "wb") as log:
            for cmd in steps:
                log.write(("$ " + " ".join(cmd) + "\n").encode())
                log.flush()
                out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=30)
                assert out.returncode == 0, f"{cmd} failed ({out.returncode}); see {self.dir / 'certutil.log'}"
        return self

    def start(self, url: str):
        env = dict(os.environ)
        env.update(HOME=str(self.home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1",
                   MOZ_CRASHREPORTER_NO_REPORT="1", MOZ_DISABLE_AUTO_SAFE_MODE="1", MOZ_REMOTE_SETTINGS_DEVTOOLS="1",
                   XDG_CACHE_HOME=str(self.home / ".cache"), XDG_CONFIG_HOME=str(self.home / ".config"))
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [FIREFOX, "--headless", "--no-remote", "--profile", str(self.profile), url],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the one we made
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        # content processes outlive the parent for a moment; end the group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)

    def cleanup(self):
        shutil.rmtree(self.profile, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.mark.timeout(240)
@BOTH_PORT_MODES
def test_firefox_call(workdir, gateway_sdes, baresip_sdes):
    """Firefox ESR (NSS DTLS, its own SDP) -> gateway -> SDES-SRTP baresip:
    connected within 20 s, audio both ways, dtls-srtp reported, BYE at the
    trunk on hangup."""
    assert Path(FIREFOX).exists(), f"{FIREFOX} missing: apt-get install firefox-esr"
    assert PAGE.exists(), PAGE
    gw, trunk = gateway_sdes, baresip_sdes
    cert = gw.dir / "data" / "tls-cert.pem"
    assert cert.exists(), f"the gateway wrote no {cert}"
    shutil.copy(cert, gw.dir / "tls-cert.pem")

    token = gw.login()
    ws_url = gw.base_url.replace("https://", "wss://") + "/ws?token=" + urllib.parse.quote(token)
    call_id = f"ff{os.urandom(6).hex()}"

    failure = bye_failure = None
    with PageServer() as page:
        ff = Firefox(workdir, cert).prepare(f"http://127.0.0.1:{page.port}")
        query = urllib.parse.urlencode({"ws": ws_url, "to": TRUNK_NUMBER, "id": call_id, "media_ms": MEDIA_MS})
        url = f"http://127.0.0.1:{page.port}/call.html?{query}"
        t0 = time.monotonic()
        try:
            ff.start(url)

            def done():
                if page.got_result.is_set():
                    return True
                if not ff.alive():
                    raise AssertionError(f"firefox exited with {ff.proc.returncode} before reporting; "
                                         f"log {ff.log_path}:\n{ff.log()[-3000:]}")
                return False

            # startup (a fresh profile: ~10 s on this machine) + call + media
            try:
                wait_until(done, 120, "the Firefox page's result", interval=0.2)
            except AssertionError as e:
                failure = f"{e}; last page events: {page.events[-8:]}; log {ff.log_path}:\n{ff.log()[-3000:]}"
            elapsed = time.monotonic() - t0
            result = page.result or {}
            # the gateway's hangup reaches the trunk as BYE; wait for it while
            # Firefox is still up, so a BYE caused by Firefox exiting (socket
            # closed) would not count
            if result.get("ok"):
                try:
                    trunk.wait_bye(timeout=10)
                except AssertionError as e:
                    bye_failure = str(e)
        finally:
            ff.stop()
            ff.cleanup()
            (ff.dir / "page-events.json").write_text(json.dumps(page.events, indent=2) + "\n")

    res = page.result or {}
    (workdir / "firefox-result.json").write_text(json.dumps(res, indent=2) + "\n")
    for key in ("offer", "answer"):
        if res.get(key):
            (ff.dir / f"{key}.sdp").write_text(res[key])

    summary = {k: res.get(k) for k in (
        "ok", "error", "userAgent", "connected", "connectedAfterMs", "pcConnectedAfterMs", "packetsReceived",
        "bytesReceived", "packetsLost", "jitter", "totalAudioEnergy", "packetsSent", "bytesSent", "dtlsCipher",
        "srtpCipher", "tlsVersion", "codec", "totalSamplesDuration", "audioLevel", "meanAudioLevel",
        "remoteTrack", "synchronizationSources", "dtlsTransportState", "timeline", "finalStates", "wsClosed",
        "messages")}
    summary["seconds_to_result"] = round(elapsed, 1)
    stats = None if not res.get("ok") else trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    save_result(workdir, firefox=summary, trunk_tx=stats and stats[0], trunk_rx=stats and stats[1],
                trunk_heard_rms=heard.rms, trunk_heard_seconds=heard.seconds,
                offer=res.get("offer"), answer=res.get("answer"))

    assert failure is None, failure
    assert res.get("ok"), (f"the Firefox call failed: {res.get('error')}\nevents: {json.dumps(res.get('events'))[-3000:]}"
                           f"\nsee {workdir}/firefox-result.json, {ff.log_path}, {gw.log_path}")
    connected = res["connected"]
    assert res["connectedAfterMs"] < 20000, f"connected after {res['connectedAfterMs']} ms"
    security = connected.get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert "sdes-srtp" in str(security.get("trunk", "")).lower(), security

    assert res["packetsReceived"] > 100, f"Firefox received {res['packetsReceived']} RTP packets"
    assert res["packetsSent"] > 100, f"Firefox sent {res['packetsSent']} RTP packets"
    energy = res.get("totalAudioEnergy")
    assert energy is not None, "Firefox's inbound-rtp stats have no totalAudioEnergy"
    assert energy > 0, f"Firefox heard silence: totalAudioEnergy {energy}"
    # the trunk's tone (amplitude 8000 of 32768): a mean level ~0.24; comfort
    # noise or clicks stay far below TONE_RMS_MIN / 32768 (~0.03)
    level = res.get("meanAudioLevel") or 0.0
    assert level * 32768 > TONE_RMS_MIN, f"Firefox's mean audio level {level:.4f} is not the trunk's tone"

    invite = trunk.received("INVITE")[0]
    assert invite.sdp_media()[2] == "RTP/SAVP", invite.text
    assert "a=crypto:" in invite.text
    assert trunk.srtp_enabled()
    assert bye_failure is None, f"the trunk got no BYE after the hangup: {bye_failure}"
    tx, rx = stats
    assert rx > 100, f"baresip received {rx} RTP packets from Firefox"
    assert tx > 100, f"baresip sent {tx} RTP packets"
    assert heard.rms > TONE_RMS_MIN, f"baresip heard RMS {heard.rms:.0f} in {heard.path}, expected Firefox's fake tone"


@pytest.mark.timeout(240)
def test_firefox_incoming_call(workdir, gateway_sdes, baresip_sdes):
    """baresip (SDES trunk) calls alice; Firefox ESR answers on
    firefox/answer.html: `incoming` with the gateway's ICE-lite offer,
    `accept` with Firefox's answer, `connected` with dtls-srtp / sdes-srtp,
    > 100 packets each way with audio energy, baresip hears Firefox, and the
    page's hangup reaches baresip as BYE."""
    assert Path(FIREFOX).exists(), f"{FIREFOX} missing: apt-get install firefox-esr"
    assert ANSWER_PAGE.exists(), ANSWER_PAGE
    gw, trunk = gateway_sdes, baresip_sdes
    cert = gw.dir / "data" / "tls-cert.pem"
    assert cert.exists(), f"the gateway wrote no {cert}"
    shutil.copy(cert, gw.dir / "tls-cert.pem")
    token = gw.login()
    ws_url = gw.base_url.replace("https://", "wss://") + "/ws?token=" + urllib.parse.quote(token)
    target = f"sip:{gw.account}@127.0.0.1:{gw.sip_port}"

    failure = bye_failure = None
    dialed_at = None
    elapsed = 0.0
    with PageServer() as page:
        ff = Firefox(workdir, cert).prepare(f"http://127.0.0.1:{page.port}")
        query = urllib.parse.urlencode({"ws": ws_url, "media_ms": MEDIA_MS, "incoming_ms": 30000})
        url = f"http://127.0.0.1:{page.port}/answer.html?{query}"
        t0 = time.monotonic()
        try:
            ff.start(url)

            def alive_or_raise():
                if not ff.alive():
                    raise AssertionError(f"firefox exited with {ff.proc.returncode} before reporting; "
                                         f"log {ff.log_path}:\n{ff.log()[-3000:]}")

            def ready():
                alive_or_raise()
                return page.got_result.is_set() or any(e.get("what") == "ready" for e in page.events)

            try:
                # a fresh profile starts in ~10 s here
                wait_until(ready, 60, "the Firefox page's signaling socket (ready)", interval=0.1)
                if not page.got_result.is_set():
                    dialed_at = time.time()
                    reply = trunk.command("dial", target)
                    assert reply.get("ok", True), f"baresip refused to dial {target}: {reply}"

                def done():
                    alive_or_raise()
                    return page.got_result.is_set()

                wait_until(done, 90, "the Firefox page's result", interval=0.2)
            except AssertionError as e:
                failure = f"{e}; last page events: {page.events[-8:]}; log {ff.log_path}:\n{ff.log()[-3000:]}"
            elapsed = time.monotonic() - t0
            result = page.result or {}
            if result.get("ok"):
                try:
                    trunk.wait_bye(timeout=10)
                except AssertionError as e:
                    bye_failure = str(e)
        finally:
            ff.stop()
            ff.cleanup()
            (ff.dir / "page-events.json").write_text(json.dumps(page.events, indent=2) + "\n")

    res = page.result or {}
    (workdir / "firefox-result.json").write_text(json.dumps(res, indent=2) + "\n")
    for key, name in (("offer", "incoming-offer.sdp"), ("answer", "incoming-answer.sdp")):
        if res.get(key):
            (ff.dir / name).write_text(res[key])
    summary = {k: res.get(k) for k in (
        "ok", "error", "userAgent", "incoming", "connected", "acceptAfterMs", "connectedAfterMs", "pcConnectedAfterMs",
        "packetsReceived", "packetsLost", "totalAudioEnergy", "meanAudioLevel", "packetsSent", "dtlsCipher",
        "srtpCipher", "tlsVersion", "dtlsRole", "codec", "timeline", "finalStates", "wsClosed", "messages")}
    summary["seconds_to_result"] = round(elapsed, 1)
    dial_to = {}
    if dialed_at:
        for key in ("incomingAtWall", "connectedAtWall"):
            if res.get(key):
                dial_to[key.replace("AtWall", "")] = round(res[key] - dialed_at * 1000)
    stats = None if not res.get("ok") else trunk.wait_rtp_stats()
    heard = trunk.dec_wav()
    save_result(workdir, firefox=summary, dial_to_incoming_ms=dial_to.get("incoming"),
                dial_to_connected_ms=dial_to.get("connected"), trunk_tx=stats and stats[0],
                trunk_rx=stats and stats[1], trunk_heard_rms=heard.rms, trunk_heard_seconds=heard.seconds)

    assert failure is None, failure
    assert res.get("ok"), (f"the Firefox answer failed: {res.get('error')}\nevents: {json.dumps(res.get('events'))[-3000:]}"
                           f"\nsee {workdir}/firefox-result.json, {ff.log_path}, {gw.log_path}")
    offer = res.get("offer") or ""
    assert "a=ice-lite" in offer, "the gateway's offer is not ICE-lite"
    assert "a=setup:actpass" in offer, "the gateway's offer does not say a=setup:actpass"
    assert "a=fingerprint:" in offer and "a=rtcp-mux" in offer, offer
    security = res["connected"].get("security") or {}
    assert "dtls-srtp" in str(security.get("browser", "")).lower(), security
    assert "sdes-srtp" in str(security.get("trunk", "")).lower(), security
    assert res["connectedAfterMs"] < 20000, f"connected {res['connectedAfterMs']} ms after incoming"

    assert res["packetsReceived"] > 100, f"Firefox received {res['packetsReceived']} RTP packets"
    assert res["packetsSent"] > 100, f"Firefox sent {res['packetsSent']} RTP packets"
    energy = res.get("totalAudioEnergy")
    assert energy is not None and energy > 0, f"Firefox heard silence: totalAudioEnergy {energy}"
    level = res.get("meanAudioLevel") or 0.0
    assert level * 32768 > TONE_RMS_MIN, f"Firefox's mean audio level {level:.4f} is not the trunk's tone"

    invite = trunk.sent("INVITE")
    assert invite and invite[0].sdp_media()[2] == "RTP/SAVP", f"baresip's INVITE ({trunk.log_path})"
    assert trunk.srtp_enabled()
    assert bye_failure is None, f"the trunk got no BYE after the hangup: {bye_failure}"
    tx, rx = stats
    assert rx > 100, f"baresip received {rx} RTP packets from Firefox"
    assert tx > 100, f"baresip sent {tx} RTP packets"
    assert heard.rms > TONE_RMS_MIN, f"baresip heard RMS {heard.rms:.0f} in {heard.path}, expected Firefox's fake tone"
