"""A hapod role listener in Python, standard library only (Python 3.11).

The reference of docs/protocol.md outside Go: it receives the controller's
role messages on UDP, verifies them (HMAC-SHA256 under the group's HKDF
subkeys, freshness, replays), decides by epoch fencing and the role lease,
acks, and fences itself when the lease lapses. It is checked against
docs/protocol-vectors.json by test_vectors.py.

Use::

    l = Listener(("0.0.0.0", 7477), pod_uid=os.environ["POD_UID"], key_dir="/keys")
    l.start()                       # serves on a daemon thread
    while True:
        s = l.changes.get()         # the newest State after each change
        ...
    if not l.active(): ...          # before each action only the active may take

Run as a program, it prints one JSON line per change (and a first line with
the bound address) on stdout.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import queue
import secrets
import signal
import socket
import sys
import threading
import time

VERSION = 2
MAX_SIZE = 1024
MAX_EPOCH = 2**31 - 1
MAX_TTL_MS = 3_600_000
FRESHNESS_MS = 30_000
NONCE_SLOTS = 16
REPLAY_WINDOW = 64
DEFAULT_PORT = 7477
HKDF_INFO = "hapod role messages, group "

_MAC_MEMBER = b',"mac":"'
_MAC_TAIL = len(_MAC_MEMBER) + 43 + 2
_U64 = 2**64
_STR = ("type", "group", "pod", "uid", "role", "status", "kid")
_UINT = ("epoch", "seq", "ttl_ms", "echo", "nonce", "boot", "ctr", "ts")
# Every member name the protocol defines, as spelled (and case-folded).
_MEMBERS = frozenset(_STR + _UINT + ("v", "lease", "mac"))
_FOLDED = frozenset(n.casefold() for n in _MEMBERS)


class _Object(dict):
    """A JSON object that remembers whether a member was named twice or a
    known member in another case: names are exact in the protocol (Go's
    encoding/json alone would read "Seq" as seq and keep the last of two)."""

    inexact = False


def _object(pairs):
    obj = _Object(pairs)
    names = [k for k, _ in pairs]
    obj.inexact = len(set(names)) != len(names) or any(
        k not in _MEMBERS and k.casefold() in _FOLDED for k in names
    )
    return obj
_KID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Drop(Exception):
    """A datagram dropped without reply; str(self) is the counter's name."""

    def __init__(self, outcome: str, reason: str = ""):
        super().__init__(outcome)
        self.outcome, self.reason = outcome, reason


def group_key(master: bytes, group: str) -> bytes:
    """The group's subkey: HKDF-SHA256 (RFC 5869), no salt, 32 bytes."""
    prk = hmac.new(b"\0" * 32, master, hashlib.sha256).digest()  # extract
    return hmac.new(prk, (HKDF_INFO + group).encode() + b"\x01", hashlib.sha256).digest()  # expand, one block


def open_datagram(b: bytes) -> tuple[bytes, bytes | None]:
    """Split off the trailing "mac" member: (body, mac) or (b, None)."""
    n = len(b)
    if n < _MAC_TAIL + 1 or b[-2:] != b'"}' or b[n - _MAC_TAIL : n - _MAC_TAIL + len(_MAC_MEMBER)] != _MAC_MEMBER:
        return b, None
    try:
        s = base64.urlsafe_b64decode(b[n - 45 : n - 2] + b"=")
    except ValueError:
        return b, None
    if len(s) != 32 or base64.urlsafe_b64encode(s).rstrip(b"=") != b[n - 45 : n - 2]:
        return b, None
    return b[: n - _MAC_TAIL] + b"}", s


def seal(body: bytes, key: bytes) -> bytes:
    """Append the MAC of body under key as its last member."""
    mac = base64.urlsafe_b64encode(hmac.new(key, body, hashlib.sha256).digest()).rstrip(b"=")
    return body[:-1] + _MAC_MEMBER + mac + b'"}'


def decode(body: bytes) -> dict:
    """Parse and validate one message (docs/protocol.md, Validation)."""
    if len(body) > MAX_SIZE:
        raise Drop("malformed", "oversized")
    try:
        obj = json.loads(body.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_object)
    except (UnicodeDecodeError, ValueError) as e:
        raise Drop("malformed", "malformed") from e
    if not isinstance(obj, dict) or "v" not in obj:
        raise Drop("malformed", "malformed")
    v = obj["v"]
    if type(v) is not int:
        raise Drop("malformed", "malformed")
    if v != VERSION:
        raise Drop("malformed", "version")
    if obj.inexact:
        raise Drop("malformed", "malformed")
    m = {"v": v}
    for f in _STR:
        x = obj.get(f)
        if x is not None and type(x) is not str:
            raise Drop("malformed", "malformed")
        # A lone surrogate escape (\ud800) becomes U+FFFD, as in Go's
        # encoding/json, so that the ack echoing it encodes as UTF-8.
        m[f] = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in x) if x else ""
    for f in _UINT:
        x = obj.get(f)
        if x is not None and (type(x) is not int or not 0 <= x < _U64):
            raise Drop("malformed", "malformed")
        m[f] = x or 0
    lease = obj.get("lease")
    if lease is not None and type(lease) is not bool:
        raise Drop("malformed", "malformed")
    m["lease"] = bool(lease)
    _validate(m)
    return m


def _no_constant(name):
    raise ValueError(name)


def _validate(m: dict) -> None:
    def bad():
        raise Drop("malformed", "malformed")

    if m["role"] not in ("active", "standby"):
        bad()
    if m["type"] == "role":
        if m["status"] or m["nonce"] or m["lease"]:
            bad()
    elif m["type"] == "ack":
        if m["status"] == "retry":
            if m["role"] != "active" or not m["nonce"]:
                bad()
        elif m["status"] not in ("ok", "stale", "wrong-pod"):
            bad()
    else:
        bad()
    if m["role"] == "active" and not 1 <= m["ttl_ms"] <= MAX_TTL_MS:
        bad()
    if m["role"] == "standby" and (m["ttl_ms"] or m["echo"]):
        bad()
    if m["epoch"] > MAX_EPOCH:
        bad()
    auth = (m["kid"], m["boot"], m["ctr"], m["ts"])
    if any(auth) and not (_valid_kid(m["kid"]) and all(auth)):
        bad()
    if not (m["group"] and m["pod"] and m["uid"]):
        bad()


def _valid_kid(k: str) -> bool:
    return 0 < len(k) <= 64 and k[0] != "." and set(k) <= _KID_CHARS


def encode(m: dict) -> bytes:
    """The canonical encoding (the Go encoder's member order)."""
    parts = [f'"v":{m.get("v") or VERSION}']
    for f in ("type", "group", "pod", "uid", "role"):
        parts.append(f'"{f}":{json.dumps(m[f], ensure_ascii=False)}')
    parts += [f'"epoch":{m["epoch"]}', f'"seq":{m["seq"]}']
    for f in ("ttl_ms", "echo"):
        if m.get(f):
            parts.append(f'"{f}":{m[f]}')
    if m.get("status"):
        parts.append(f'"status":{json.dumps(m["status"], ensure_ascii=False)}')
    if m.get("nonce"):
        parts.append(f'"nonce":{m["nonce"]}')
    if m.get("lease"):
        parts.append('"lease":true')
    if m.get("kid"):
        parts.append(f'"kid":{json.dumps(m["kid"], ensure_ascii=False)}')
    for f in ("boot", "ctr", "ts"):
        if m.get(f):
            parts.append(f'"{f}":{m[f]}')
    return ("{" + ",".join(parts) + "}").encode()


class KeyDir:
    """A directory of this group's subkeys (a mounted Secret): one file per
    key id holding the key in base64; dot entries and "current" are not
    keys. Read again every poll seconds, and on refresh() at most once a
    second; an emptied directory keeps the keys loaded."""

    def __init__(self, path: str, poll: float = 10.0):
        self.path, self.poll = path, poll
        self.keys: dict[str, bytes] = {}
        self.error: Exception | None = None  # the last re-read's failure
        self._loaded = self._forced = -1e18
        # The first read raises: a mistyped path must not silently turn
        # authentication off.
        self.keys = self._read()
        self._loaded = time.monotonic()

    def _read(self) -> dict[str, bytes]:
        d = self.path
        # The kubelet swaps "..data" to update a Secret volume: reading
        # through it once sees one version, never a mix.
        if os.path.islink(os.path.join(d, "..data")):
            d = os.path.realpath(os.path.join(d, "..data"))
        keys = {}
        for name in os.listdir(d):
            p = os.path.join(d, name)
            if name.startswith(".") or name == "current" or os.path.isdir(p):
                continue
            if not _valid_kid(name):
                raise ValueError(f"key file {name!r}: not a key id")
            with open(p, "rb") as f:
                keys[name] = base64.b64decode(f.read().strip(), validate=True)
            if len(keys[name]) < 16:
                raise ValueError(f"key {name!r}: {len(keys[name])} bytes, want at least 16")
        return keys

    def _load(self, now: float) -> None:
        self._loaded = now
        try:
            keys = self._read()
        except (OSError, ValueError) as e:
            self.error = e  # a Secret being rewritten: keep the keys in use
            return
        self.error = None
        # An emptied directory keeps the keys loaded: whoever can empty
        # the Secret must not be able to turn authentication off.
        if keys or not self.keys:
            self.keys = keys

    def get(self) -> dict[str, bytes]:
        now = time.monotonic()
        if now - self._loaded >= self.poll:
            self._load(now)
        return self.keys

    def refresh(self) -> dict[str, bytes]:
        now = time.monotonic()
        if now - self._forced >= 1.0:
            self._forced = now
            self._load(now)
        return self.keys


@dataclasses.dataclass(frozen=True)
class State:
    """The role held: role is "" (unknown: treat as standby), "active" or
    "standby"; fenced means standby because the lease at epoch lapsed;
    expiry is the lease's end (monotonic ns) while active, or when it ended."""

    role: str = ""
    epoch: int = 0
    group: str = ""
    fenced: bool = False
    expiry: int = 0

    def active_at(self, now_ns: int) -> bool:
        return self.role == "active" and now_ns < self.expiry


class Core:
    """The listener's decisions, without a socket or a clock of its own:
    handle() takes a datagram and the time (wall ms for ts and freshness,
    monotonic ns for the lease) and returns the outcome, the ack to send
    (or None) and the states to notify, in order."""

    def __init__(self, pod_uid="", pod_name="", group="", keys=None, freshness_ms=FRESHNESS_MS, boot=None, random=None):
        self.pod_uid, self.pod_name, self.group = pod_uid, pod_name, group
        self.keys = keys  # None, a dict kid -> subkey, or a KeyDir
        self.freshness_ms = freshness_ms
        self.boot = boot or (secrets.randbits(64) or 1)
        self.random = random or (lambda: secrets.randbits(64))
        self.state = State()
        self.held = None  # the role message that granted or last renewed the active lease
        self.ctr = 0
        self.nonces: list[tuple[int, int]] = []  # (nonce, sent at), newest last
        self.replays: dict[int, list[int]] = {}  # boot -> [top, seen bits, last ns]
        self.pruned = -(2**63)

    def _ring(self, refresh=False) -> dict:
        if self.keys is None:
            return {}
        if isinstance(self.keys, KeyDir):
            return self.keys.refresh() if refresh else self.keys.get()
        return self.keys

    def state_at(self, now_ns: int) -> State:
        """The state held at now: a lapsed lease reads as fenced even
        before lapse() has recorded it."""
        s = self.state
        if s.role == "active" and now_ns >= s.expiry:
            return dataclasses.replace(s, role="standby", fenced=True)
        return s

    def lapse(self, now_ns: int) -> State | None:
        """Fence a lapsed lease: the fenced state, or None."""
        s = self.state
        if s.role != "active" or now_ns < s.expiry:
            return None
        self.state = dataclasses.replace(s, role="standby", fenced=True)
        return self.state

    def _issue(self, now_ns: int) -> int:
        n = 0
        while n == 0:
            n = self.random()
        self.nonces = (self.nonces + [(n, now_ns)])[-NONCE_SLOTS:]
        return n

    def _lease_end(self, echo: int, ttl_ms: int, now_ns: int) -> int | None:
        for n, at in self.nonces:
            if echo and n == echo:
                end = at + ttl_ms * 1_000_000
                return end if now_ns < end else None
        return None

    def _verify(self, m: dict, body: bytes, mac: bytes | None, wall_ms: int, now_ns: int) -> None:
        ring = self._ring()
        if not ring:
            return
        if mac is None or not m["kid"]:
            raise Drop("unauthenticated")
        for attempt in (0, 1):
            key = ring.get(m["kid"])
            if key is not None and hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
                break
            if attempt == 1 or not isinstance(self.keys, KeyDir):
                raise Drop("unknown-key" if key is None else "bad-mac")
            ring = self._ring(refresh=True)
        if abs(wall_ms - min(m["ts"], 2**62)) > self.freshness_ms:
            raise Drop("expired")
        if not self._accept_ctr(m["boot"], m["ctr"], now_ns):
            raise Drop("replayed")

    def _accept_ctr(self, boot: int, ctr: int, now_ns: int) -> bool:
        window = self.freshness_ms * 1_000_000
        if now_ns - self.pruned >= window:
            self.pruned = now_ns
            self.replays = {b: w for b, w in self.replays.items() if now_ns - w[2] <= 2 * window}
        w = self.replays.setdefault(boot, [0, 0, now_ns])
        top, seen = w[0], w[1]
        if ctr == 0:
            return False
        if ctr > top:
            shift = ctr - top
            w[1] = 1 if shift >= REPLAY_WINDOW else ((seen << shift) | 1) & (_U64 - 1)
            w[0] = ctr
        elif top - ctr >= REPLAY_WINDOW or seen & (1 << (top - ctr)):
            return False
        else:
            w[1] = seen | (1 << (top - ctr))
        w[2] = now_ns
        return True

    def handle(self, datagram: bytes, wall_ms: int, now_ns: int):
        """Decide on one datagram: (outcome, reason, ack bytes or None, states to notify)."""
        changes = []
        try:
            if len(datagram) > MAX_SIZE:
                raise Drop("malformed", "oversized")
            body, mac = open_datagram(datagram)
            m = decode(body)
            if m["type"] != "role":
                raise Drop("malformed", "not-role")
            self._verify(m, body, mac, wall_ms, now_ns)
        except Drop as d:
            return d.outcome, d.reason, None, changes
        s = self.lapse(now_ns)
        if s:
            changes.append(s)
        cur, status = self.state, "ok"
        if (
            (self.pod_uid and m["uid"] != self.pod_uid)
            or (self.pod_name and m["pod"] != self.pod_name)
            or (self.group and m["group"] != self.group)
            or (cur.group and m["group"] != cur.group)
        ):
            outcome = status = "wrong-pod"
        else:
            v = decide(cur, m["role"], m["epoch"])
            if v == "stale":
                outcome = status = "stale"
            elif v == "duplicate":
                outcome = "duplicate"
            elif m["role"] == "standby":
                self.state = State("standby", m["epoch"], m["group"])
                changes.append(self.state)
                outcome = "accepted"
            else:
                end = self._lease_end(m["echo"], m["ttl_ms"], now_ns)
                if end is None:
                    outcome = status = "retry"
                elif v == "renew":
                    self.state = dataclasses.replace(cur, expiry=max(cur.expiry, end))
                    self.held = m
                    outcome = "renewed"
                else:
                    self.state = State("active", m["epoch"], m["group"], False, end)
                    self.held = m
                    changes.append(self.state)
                    outcome = "accepted"
        a = dict(m, type="ack", status=status, lease=True, nonce=0 if status == "wrong-pod" else self._issue(now_ns))
        if self.pod_name:
            a["pod"] = self.pod_name
        ack = self._seal(a, m["kid"], wall_ms)
        if len(ack) > MAX_SIZE:
            ack = None  # as wire.Encode refuses it: the controller's deadline reports it
        return outcome, "", ack, changes

    def release(self, wall_ms: int, now_ns: int) -> bytes | None:
        """Give up an active lease, as pkg/role's Close does: hold standby at
        its epoch (no renewal at that epoch makes it active again) and return
        the unsolicited standby ack (seq 0) that tells the controller so, so
        that a successor need not wait for the lease to run out. None when
        not active."""
        s = self.state
        if not s.active_at(now_ns) or self.held is None:
            return None
        self.state = State("standby", s.epoch, s.group, False, s.expiry)
        a = dict(self.held, type="ack", role="standby", status="ok", seq=0, ttl_ms=0, echo=0, nonce=self._issue(now_ns), lease=True)
        if self.pod_name:
            a["pod"] = self.pod_name
        return self._seal(a, self.held["kid"], wall_ms)

    def _seal(self, a: dict, kid: str, wall_ms: int) -> bytes:
        a.update(kid="", boot=0, ctr=0, ts=0)
        key = self._ring().get(kid) if kid else None
        if key is None:
            return encode(a)
        self.ctr += 1
        a.update(kid=kid, boot=self.boot, ctr=self.ctr, ts=max(wall_ms, 1))
        return seal(encode(a), key)


def decide(cur: State, role: str, epoch: int) -> str:
    """Epoch fencing (docs/protocol.md): apply, renew, duplicate or stale."""
    if epoch > cur.epoch:
        return "apply"
    if epoch < cur.epoch:
        return "stale"
    if role == "active" and cur.role == "active":
        return "renew"
    if role == "active" and cur.fenced:
        return "apply"
    if role == cur.role and not cur.fenced:
        return "duplicate"
    if cur.role == "" or role == "standby":
        return "apply"
    return "stale"


class Listener:
    """A Core on a UDP socket. changes holds the newest State after each
    change (a queue of one: a slow reader skips intermediate states);
    on_change, if set, is called first, on the serving thread."""

    def __init__(self, addr=("0.0.0.0", DEFAULT_PORT), pod_uid="", pod_name="", group="", key_dir="", freshness_ms=FRESHNESS_MS, on_change=None):
        self.core = Core(pod_uid, pod_name, group, KeyDir(key_dir) if key_dir else None, freshness_ms)
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(addr)
        self.changes: queue.Queue[State] = queue.Queue(maxsize=1)
        self.on_change = on_change
        self._mu = threading.Lock()
        self._closed = False
        self._peer = None  # where the message that set core.held came from

    @property
    def addr(self):
        return self.sock.getsockname()

    def state(self) -> State:
        with self._mu:
            return self.core.state_at(time.monotonic_ns())

    def active(self) -> bool:
        with self._mu:
            return self.core.state.active_at(time.monotonic_ns())

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve, daemon=True)
        t.start()
        return t

    def serve(self) -> None:
        while not self._closed:
            with self._mu:
                fenced = self.core.lapse(time.monotonic_ns())
                s = self.core.state
            if fenced:
                self._notify(fenced)
            timeout = None
            if s.role == "active":
                timeout = max((s.expiry - time.monotonic_ns()) / 1e9, 0.0005)
            self.sock.settimeout(timeout)
            try:
                # One byte more than MAX_SIZE, so that an oversized datagram
                # is seen as such rather than truncated into one that parses.
                b, peer = self.sock.recvfrom(MAX_SIZE + 1)
            except socket.timeout:  # the lease's end: fence at the loop's top
                continue
            except OSError:
                if self._closed:
                    return
                time.sleep(0.01)  # unexpected: never spin a core on it
                continue
            if self._closed:
                return
            with self._mu:
                held = self.core.held
                _, _, ack, changes = self.core.handle(b, time.time_ns() // 1_000_000, time.monotonic_ns())
                if self.core.held is not held:
                    self._peer = peer
            if ack is not None:
                try:
                    self.sock.sendto(ack, peer)
                except OSError:
                    pass  # the controller's resend repairs a lost ack
            for c in changes:
                self._notify(c)

    def _notify(self, s: State) -> None:
        if self.on_change:
            self.on_change(s)
        try:
            self.changes.get_nowait()
        except queue.Empty:
            pass
        self.changes.put_nowait(s)

    def close(self) -> None:
        """Stop serving. An active lease is released first (Core.release):
        the application must not act as active once it has called close."""
        with self._mu:
            ack = self.core.release(time.time_ns() // 1_000_000, time.monotonic_ns())
            released, peer = self.core.state, self._peer
        if ack is not None:
            self._notify(released)
            try:
                self.sock.sendto(ack, peer)
            except OSError:
                pass  # the lease still runs out
        self._closed = True
        try:
            # Closing alone does not wake a thread blocked in recvfrom on
            # Linux; shutting the socket down does.
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="hapod role listener: prints one JSON line per role change")
    p.add_argument("--addr", default=f"0.0.0.0:{DEFAULT_PORT}")
    p.add_argument("--pod-uid", default=os.environ.get("POD_UID", ""))
    p.add_argument("--pod-name", default="")
    p.add_argument("--group", default="")
    p.add_argument("--key-dir", default="")
    a = p.parse_args(argv)
    host, _, port = a.addr.rpartition(":")
    host = host.strip("[]")  # [::1]:7477

    def show(s: State) -> None:
        print(json.dumps({"event": "change", "role": s.role or "unknown", "epoch": s.epoch, "group": s.group, "fenced": s.fenced}), flush=True)

    l = Listener((host, int(port)), a.pod_uid, a.pod_name, a.group, a.key_dir, on_change=show)
    h, port = l.addr[:2]  # an IPv6 address has four members
    print(json.dumps({"event": "listening", "addr": f"[{h}]:{port}" if ":" in h else f"{h}:{port}"}), flush=True)
    def stop(*_):
        raise KeyboardInterrupt

    # SIGTERM (the kubelet's stop) releases the role as Ctrl-C does.
    signal.signal(signal.SIGTERM, stop)
    try:
        l.serve()
    except KeyboardInterrupt:
        l.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
