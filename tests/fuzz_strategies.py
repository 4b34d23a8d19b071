"""Hypothesis strategies (and profiles) for the property-based suites, tests/test_fuzz_*.py.

Profiles: ``ci`` (the default) keeps `make test` to about a minute and is derandomized, so a
failure in CI fails the same way on a laptop; ``fuzz`` (``HYPOTHESIS_PROFILE=fuzz``, `make fuzz`)
runs `FUZZ_SCALE` times as many examples, randomly, and keeps its example database under /tmp
(never in the repository) so a failure found once is replayed first next time.

JSON is written by `dump`, not ``json.dumps``: bodies must be able to hold what ``json.dumps``
cannot produce (duplicate keys, ``NaN``, ``1e999``, the six characters ``\\ud800``), written as
`Raw` fragments and `Obj` pairs. Runtime values (the Supabase issuer, a key id) appear in
strategies as the placeholders ``${issuer}`` and ``${kid}``, substituted when a token is signed.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import os
import string
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jwt
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.conftest import ACCESS_TOKEN, REFRESH_TOKEN, SECRET
from tests.fuzz_gateway import SUPABASE_USER_ID, FuzzGateway

F = TypeVar("F", bound=Callable[..., Any])

# -- profiles ------------------------------------------------------------------------------

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "ci",
    deadline=None,  # each example is a network round trip through a second thread
    derandomize=True,
    database=None,
    suppress_health_check=_SLOW_IS_FINE,
    max_examples=50,
)
settings.register_profile(
    "fuzz",
    deadline=None,
    derandomize=False,
    database=DirectoryBasedExampleDatabase("/tmp/gatehouse-hypothesis"),
    suppress_health_check=_SLOW_IS_FINE,
    max_examples=50,
    print_blob=True,
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
FUZZ_SCALE = 40 if PROFILE == "fuzz" else 1


def examples(n: int, *, shrink: bool = True) -> Callable[[F], F]:
    """``n`` examples in CI, `FUZZ_SCALE` times more under ``make fuzz``. ``shrink=False`` for
    tests whose every failing example costs a timeout: the unshrunk one is reported as found."""
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    return settings(max_examples=n * FUZZ_SCALE, phases=phases)


# -- JSON text with fragments json.dumps cannot write --------------------------------------


@dataclasses.dataclass(frozen=True)
class Raw:
    """JSON text written as is (``NaN``, ``1e999``, ``"\\ud800"``, or something invalid)."""

    text: str


@dataclasses.dataclass(frozen=True)
class Obj:
    """A JSON object as its pairs, in order: duplicate keys allowed."""

    pairs: tuple[tuple[str, Any], ...]


def dump(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, dict):
        return dump(Obj(tuple(value.items())))
    if isinstance(value, list | tuple):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def plain(value: Any) -> Any:
    """What a lenient parser (Python's) makes of ``value``, for oracles."""
    return json.loads(dump(value))


RAW_NUMBERS = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e999"), Raw("-1e999"), Raw("-0"), Raw("1E+2")]
SURROGATES = [
    Raw('"\\ud800"'),
    Raw('"\\udfff"'),
    Raw('"a\\ud83d"'),
    Raw('"\\ude00\\ud83d"'),  # a pair in the wrong order: two lone surrogates
    Raw('"\\ud83d\\ude00"'),  # a proper pair: one emoji
    Raw('"\\u0000"'),
]

scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([10**30, -(10**30), 2**63, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(RAW_NUMBERS + SURROGATES),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.lists(st.tuples(st.sampled_from(["a", "b", "user", "query"]), inner), max_size=4).map(
            lambda pairs: Obj(tuple(pairs))
        ),
    ),
    max_leaves=8,
)
"""Every JSON type, nested a little, with non-finite numbers, surrogates and duplicate keys."""


def nested(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * depth + "]" * depth)
    if kind == "object":
        return Raw('{"a":' * depth + "1" + "}" * depth)
    return Raw('[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2))


depths = st.one_of(st.integers(1, 70), st.integers(900, 1100), st.integers(1100, 60_000))
deep_values = st.builds(nested, depths, st.sampled_from(["array", "object", "mixed"]))

_BOMS = [b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe"]
_BAD_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf4\x90\x80\x80"]


def position(draw: st.DrawFn, length: int) -> int:
    """An index into something ``length`` long, drawn as a fraction: a draw whose bounds depended
    on a length that varies between runs (a signature, a random IV) would make Hypothesis's
    replays diverge."""
    return draw(st.integers(0, 1024)) * length // 1024


@st.composite
def encoded(draw: st.DrawFn, value: Any) -> bytes:
    """``value`` as a request body: UTF-8, or spoilt by a BOM, another encoding, a byte that is
    not UTF-8, truncation or padding up to and past the JSON size limits."""
    text = dump(value)
    mode = draw(st.sampled_from(["utf8"] * 6 + ["bom", "utf16", "bad_byte", "truncated", "padded", "spaced"]))
    if mode == "bom":
        return draw(st.sampled_from(_BOMS)) + text.encode("utf-8", "surrogatepass")
    if mode == "utf16":
        return text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32"])), "surrogatepass")
    data = text.encode("utf-8", "surrogatepass")
    if mode == "bad_byte":
        at = position(draw, len(data))
        return data[:at] + draw(st.sampled_from(_BAD_UTF8)) + data[at:]
    if mode == "truncated" and data:
        return data[: min(position(draw, len(data)), len(data) - 1)]
    if mode == "padded":
        # Around the limits: 256 KiB (POST /api/chat) and 1 MiB (every other JSON body).
        size = draw(st.sampled_from([256 * 1024 - 64, 256 * 1024 + 1, 1024 * 1024 - 64, 1024 * 1024 + 1]))
        return b" " * max(0, size - len(data)) + data
    if mode == "spaced":
        return b" \t\r\n" + data + b"\n"
    return data


def json_bodies(values: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[bytes]:
    """Bodies of every JSON shape (and near-JSON): see `encoded`."""
    base = st.one_of(json_values, deep_values, st.builds(lambda v: {"a": v}, deep_values))
    return (values if values is not None else base).flatmap(encoded)


messages = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["hello", " ", "", "\u2028", "\x00", "é" * 3]),
    st.sampled_from(SURROGATES),
    json_values,
)

uuids_or_not = st.one_of(
    st.uuids().map(str), st.sampled_from(["", "not-a-uuid", "../x", "6F1D2C3B4A5E4F608A7B000000000000"])
)


@st.composite
def chat_objects(draw: st.DrawFn) -> Any:
    """``POST /api/chat`` bodies: mostly the right shape, every field of any type, a ``user``
    of the browser's own, deep ``inputs`` (Dify's body is re-serialised from them)."""
    pairs: list[tuple[str, Any]] = [("message", draw(messages))]
    optional: dict[str, st.SearchStrategy[Any]] = {
        "conversationId": st.one_of(uuids_or_not, json_values),
        "inputs": st.one_of(st.just({}), st.dictionaries(st.text(max_size=4), json_values, max_size=3), deep_values),
        "files": st.one_of(
            st.just([]), st.lists(st.dictionaries(st.text(max_size=4), scalars), max_size=2), json_values
        ),
        "stream": st.one_of(st.just(False), st.booleans(), scalars),
        "auto_generate_name": scalars,
        "user": st.sampled_from(["evil", SUPABASE_USER_ID.upper(), ""]),
        "response_mode": st.just("streaming"),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        pairs.append((key, draw(optional[key])))
    if draw(st.booleans()):
        pairs.append(("message", draw(messages)))  # a duplicate key: the last one wins in Python
    if "stream" not in dict(pairs):
        pairs.append(("stream", False))  # blocking answers keep examples quick
    return Obj(tuple(pairs))


# -- proxied paths and queries -------------------------------------------------------------

_PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_TRICKY_PIECES = [
    ".", "..", "...", "%2e", "%2E", ".%2e", "%2e%2E", "%252e", "%252e%252e", "%25252e%25252e", "..;x", ".;a=b",
    "%2f", "%2F", "%5c", "%5C", "%252f", "%25", "%", "%2", "%zz", "%%", "%00", "%0a", "%0d", "%09", "%7f",
    "%ff", "%c0%ae", "%c0%af", "%e0%80%ae", "%e2%80%ae", "%ed%a0%80", "%C3%A9", "%u002e", "\\", "é", "\u202e",
    "\x00", "\t", "\x7f", "\x1b", " ", "#", "?", "[", "]", "{", "|", "`", "^", '"', "<", ">",
]  # fmt: skip
_SEPARATORS = ["/"] * 6 + ["//", "\\", "%2f", "/./", "/../", "/%2e%2e/"]

path_pieces = st.one_of(
    st.text(_PCHAR, min_size=1, max_size=10).map(str.encode),
    st.sampled_from(_TRICKY_PIECES).map(lambda p: p.encode("utf-8")),
    st.text(min_size=1, max_size=3).map(lambda t: t.encode("utf-8")),
    st.binary(min_size=1, max_size=3).map(lambda b: "".join(f"%{x:02x}" for x in b).encode()),
    st.binary(min_size=1, max_size=2).filter(lambda b: not (set(b) & {0x20, 0x0D, 0x0A, 0x3F})),
)
segments = st.one_of(
    st.lists(path_pieces, min_size=1, max_size=4).map(b"".join),
    st.integers(200, 6000).map(lambda n: b"s" * n),
)


@st.composite
def proxy_paths(draw: st.DrawFn) -> bytes:
    """What follows ``/api/proxy/`` on the request line (raw bytes)."""
    parts = draw(st.lists(segments, min_size=1, max_size=6))
    out = parts[0]
    for part in parts[1:]:
        out += draw(st.sampled_from(_SEPARATORS)).encode() + part
    return out + (b"/" if draw(st.booleans()) else b"")


query_pieces = st.one_of(
    st.text(_PCHAR + "/?", max_size=8).map(str.encode),
    st.sampled_from([b"%", b"%zz", b"%00", b"%ff", b"&&", b"=", b"#frag", b"+", b"%2e%2e/", b"\xff", b"\x01", b"\t"]),
    st.text(max_size=3).map(lambda t: t.encode("utf-8")),
)
queries = st.one_of(st.none(), st.lists(query_pieces, max_size=5).map(b"".join))

# -- tokens --------------------------------------------------------------------------------

_WRONG_EC_KEY = ec.generate_private_key(ec.SECP256R1())


@dataclasses.dataclass(frozen=True)
class JwtSpec:
    header: Any  # a JSON value (usually an object); placeholders allowed
    claims: Any
    signing: str  # hs256 | es256 (the project's keys) | hs256-wrong | es256-wrong | none | garbage
    shape: str  # jws | two | four | jwe | spaced | not-base64

    @property
    def forged(self) -> bool:
        return self.signing not in ("hs256", "es256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _substitute(text: str, gw: FuzzGateway) -> str:
    return text.replace("${issuer}", gw.supabase.issuer).replace("${kid}", gw.supabase.kid)


def sign_jwt(spec: JwtSpec, gw: FuzzGateway) -> tuple[str, str | None]:
    """The compact token of ``spec`` and the ``sub`` it claims (when a string)."""
    header = _substitute(dump(spec.header), gw).encode("utf-8", "surrogatepass")
    claims_text = _substitute(dump(spec.claims), gw)
    claims = claims_text.encode("utf-8", "surrogatepass")
    signing_input = f"{b64(header)}.{b64(claims)}".encode()
    signature = b""
    if spec.signing == "hs256":
        signature = hmac.new((gw.supabase.jwt_secret or "").encode(), signing_input, hashlib.sha256).digest()
    elif spec.signing == "hs256-wrong":
        signature = hmac.new(b"not-the-secret", signing_input, hashlib.sha256).digest()
    elif spec.signing in ("es256", "es256-wrong"):
        key = gw.supabase.fake.signing_key("ES256").private_key if spec.signing == "es256" else _WRONG_EC_KEY
        signature = jwt.get_algorithm_by_name("ES256").sign(signing_input, key)
    elif spec.signing == "garbage":
        signature = b"\x00garbage"
    token = f"{signing_input.decode()}.{b64(signature)}"
    if spec.shape == "two":
        token = signing_input.decode()
    elif spec.shape == "four":
        token += ".e30"
    elif spec.shape == "jwe":
        token = f"{b64(header)}..{b64(claims)}.{b64(signature)}.AA"
    elif spec.shape == "spaced":
        token = f" {token} "
    elif spec.shape == "not-base64":
        token = token.replace("-", "+").replace("_", "/") + "=="
    try:
        sub = json.loads(claims_text).get("sub")
    except (ValueError, AttributeError, RecursionError):
        sub = None
    return token, sub if isinstance(sub, str) else None


def mutations(base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` (a value that is accepted) with up to three of ``fields`` removed or replaced:
    one odd field among right ones is what gets past the first checks to the later ones."""

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out = dict(base)
        for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=3)):
            if draw(st.integers(0, 4)) == 0:
                out.pop(key, None)
            else:
                out[key] = draw(fields[key])
        return out

    return build()


_PAST, _FUTURE = 1_700_000_000, 4_000_000_000
times = st.one_of(
    st.integers(_PAST, _FUTURE),
    st.integers(-(2**40), 2**40),
    st.sampled_from([10**20, -(10**20), 2**63, 2**64 + 1, 10**400, -(10**400), 1.5e300, 5e-324]),
    st.sampled_from([Raw("1e999"), Raw("NaN"), Raw("-Infinity"), Raw("1e308"), Raw("4e9"), Raw("-0")]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(string.digits, min_size=1, max_size=12),
)
any_time = st.one_of(times, times, json_values)

jwt_header_fields: dict[str, st.SearchStrategy[Any]] = {
    "alg": st.one_of(st.sampled_from(["HS256", "ES256", "RS256", "none", "None", "HS512", "", "hs256"]), json_values),
    "kid": st.one_of(st.sampled_from(["${kid}", "unknown-kid", ""]), json_values),
    "typ": st.one_of(st.sampled_from(["JWT", "at+jwt"]), json_values),
    "crit": json_values,
    "jku": st.just("https://evil.example/jwks.json"),
}
jwt_claim_fields: dict[str, st.SearchStrategy[Any]] = {
    "sub": st.one_of(st.sampled_from([SUPABASE_USER_ID, "", " "]), st.uuids().map(str), json_values),
    "exp": any_time,
    "aud": st.one_of(st.sampled_from(["anon", ["authenticated"], ["x", "authenticated"], [], ""]), json_values),
    "iss": st.one_of(st.sampled_from(["${issuer}/", "https://evil.example/auth/v1", ""]), json_values),
    "iat": any_time,
    "nbf": any_time,
    "email": st.one_of(st.emails(), json_values),
    "role": json_values,
}
_VALID_CLAIMS = {"sub": SUPABASE_USER_ID, "exp": _FUTURE, "aud": "authenticated", "iss": "${issuer}", "iat": _PAST}


@st.composite
def jwt_specs(draw: st.DrawFn) -> JwtSpec:
    signing = draw(st.sampled_from(["hs256", "hs256", "es256", "hs256-wrong", "es256-wrong", "none", "garbage"]))
    right = {"alg": "HS256", "typ": "JWT"} if signing.startswith("hs") else {"alg": "ES256", "kid": "${kid}"}
    header = draw(st.one_of(mutations(right, jwt_header_fields), mutations(right, jwt_header_fields), json_values))
    claims = draw(
        st.one_of(mutations(_VALID_CLAIMS, jwt_claim_fields), mutations(_VALID_CLAIMS, jwt_claim_fields), json_values)
    )
    shape = draw(st.sampled_from(["jws"] * 8 + ["two", "four", "jwe", "spaced", "not-base64"]))
    return JwtSpec(header, claims, signing, shape)


# -- next-auth / Auth.js sessions ----------------------------------------------------------


def _v4_key() -> bytes:
    info = b"NextAuth.js Generated Encryption Key"
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=info).derive(SECRET.encode())


def _v5_key(cookie_name: str, length: int) -> bytes:
    info = f"Auth.js Generated Encryption Key ({cookie_name})".encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=cookie_name.encode(), info=info).derive(SECRET.encode())


_V4_KEY = _v4_key()


def seal(kind: str, claims_text: str, cookie_name: str) -> str:
    """A session token of ``kind`` (v4: next-auth's dir + A256GCM; v5 / v5-gcm: Auth.js's
    A256CBC-HS512 or A256GCM) around exactly ``claims_text``, under the test secret: written
    here, not by the codecs, whose ``encode`` sets ``iat``/``exp``/``jti`` itself."""
    plaintext = claims_text.encode("utf-8", "surrogatepass")
    iv = os.urandom(12)
    if kind == "v4":
        protected = b64(b'{"alg":"dir","enc":"A256GCM"}')
        sealed = AESGCM(_V4_KEY).encrypt(iv, plaintext, protected.encode())
        return f"{protected}..{b64(iv)}.{b64(sealed[:-16])}.{b64(sealed[-16:])}"
    if kind == "v5-gcm":
        protected = b64(b'{"alg":"dir","enc":"A256GCM"}')
        sealed = AESGCM(_v5_key(cookie_name, 32)).encrypt(iv, plaintext, protected.encode())
        return f"{protected}..{b64(iv)}.{b64(sealed[:-16])}.{b64(sealed[-16:])}"
    key = _v5_key(cookie_name, 64)
    protected = b64(b'{"alg":"dir","enc":"A256CBC-HS512"}')
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key[32:]), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    aad = protected.encode()
    tag = hmac.new(key[:32], aad + iv + ciphertext + (len(aad) * 8).to_bytes(8, "big"), hashlib.sha512).digest()
    return f"{protected}..{b64(iv)}.{b64(ciphertext)}.{b64(tag[:32])}"


access_tokens = st.one_of(
    st.just(ACCESS_TOKEN),
    st.sampled_from(["\r\nX-Injected: 1", " ", "\x00", "é", ",Bearer x", "\t"]).map(lambda s: ACCESS_TOKEN + s),
    json_values,
)
session_claims = mutations(
    {"sub": "user-1", "access_token": ACCESS_TOKEN, "refresh_token": REFRESH_TOKEN, "exp": _FUTURE},
    {
        "sub": json_values,
        "access_token": access_tokens,
        "accessToken": access_tokens,
        "refresh_token": st.one_of(st.just(REFRESH_TOKEN), json_values),
        "exp": any_time,
        "expires_at": any_time,
        "accessTokenExpires": any_time,
        "user": st.one_of(st.just({"id": "u", "name": "N", "api_token": ACCESS_TOKEN}), json_values),
        "name": json_values,
        "picture": json_values,
    },
)


def offered_tokens(claims: Any) -> set[str]:
    """The access tokens a session with ``claims`` could forward."""
    try:
        parsed = plain(claims)
    except (ValueError, RecursionError):
        return set()
    if not isinstance(parsed, dict):
        return set()
    return {t for t in (parsed.get("accessToken"), parsed.get("access_token")) if isinstance(t, str) and t}


# -- credentials ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Credentials:
    headers: tuple[tuple[str, str], ...]
    tokens: frozenset[str]  # access tokens the backend may receive for them
    subs: frozenset[str]  # Supabase user ids they may authenticate as
    notes: tuple[str, ...]  # what was built, for a failing example's report


def _chunk_names(draw: st.DrawFn, name: str, value: str) -> list[tuple[str, str]]:
    """``value`` under ``name``, or split into ``name.0``, ``name.1``, ... (sometimes with a
    gap, a stray index or a wrong suffix, as browsers can be left holding)."""
    if not value or draw(st.integers(0, 2)) == 0:
        return [(name, value)]
    cuts = sorted({position(draw, len(value)) or 1 for _ in range(draw(st.integers(1, 3)))})
    pieces = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]
    suffixes = [str(i) for i in range(len(pieces))]
    if draw(st.integers(0, 3)) == 0:
        at = min(position(draw, len(suffixes)), len(suffixes) - 1)
        suffixes[at] = draw(st.sampled_from(["01", "²", "-1", "a", "", " 1", str(len(pieces) + 3)]))
    return [(f"{name}.{s}", p) for s, p in zip(suffixes, pieces, strict=True)]


_COOKIE_KINDS = ["v4", "v5", "v5-gcm", "sb-base64", "sb-raw", "sb-list", "garbage", "tampered"]


_AUTH_KINDS = ["none", "jwt", "jwt", "jwe", "odd"]


@st.composite
def credentials(
    draw: st.DrawFn, gw: FuzzGateway, cookies: Sequence[str] = _COOKIE_KINDS, auth: Sequence[str] = _AUTH_KINDS
) -> Credentials:
    """Cookies (next-auth v4, Auth.js v5, @supabase/ssr; chunked, prefixed, spoilt) and an
    ``Authorization`` header (Supabase JWTs of every shape, next-auth JWEs), any mix of them;
    ``cookies`` and ``auth`` narrow the kinds drawn."""
    pairs: list[tuple[str, str]] = []
    tokens: set[str] = set()
    subs: set[str] = set()
    notes: list[str] = []
    sb_name = gw.settings.supabase.cookie_name if gw.settings.supabase else ""
    for kind in draw(st.lists(st.sampled_from(cookies), max_size=3)) if cookies else []:
        if kind in ("v4", "v5", "v5-gcm", "tampered"):
            base = "next-auth.session-token" if kind in ("v4", "tampered") else "authjs.session-token"
            name = draw(st.sampled_from([base, base, f"__Secure-{base}", f"__Host-{base}", base.upper()]))
            claims = draw(session_claims)
            value = seal("v4" if kind == "tampered" else kind, dump(claims), name)
            if kind == "tampered":
                at = min(position(draw, len(value)), len(value) - 1)
                value = value[:at] + ("A" if value[at] != "A" else "B") + value[at + 1 :]
            else:
                tokens |= offered_tokens(claims)
            notes.append(f"{kind} cookie {name}: {dump(claims)[:300]}")
            pairs += _chunk_names(draw, name, value)
        elif kind.startswith("sb-"):
            spec = draw(jwt_specs())
            token, sub = sign_jwt(spec, gw)
            if not spec.forged:
                tokens.add(token)
                subs |= {sub} if sub else set()
            session: Any = [token, "refresh"] if kind == "sb-list" else {"access_token": token, "refresh_token": "r"}
            text = json.dumps(session)
            value = "base64-" + b64(text.encode()) if kind == "sb-base64" else urllib.parse.quote(text)
            name = draw(st.sampled_from([sb_name, sb_name, "sb-other-auth-token", sb_name + "-code-verifier"]))
            notes.append(f"{kind} cookie {name}: {spec}")
            pairs += _chunk_names(draw, name, value)
        else:
            name = draw(st.sampled_from(["next-auth.session-token", "authjs.session-token", sb_name, "x"]))
            value = draw(st.one_of(st.text(max_size=40), st.sampled_from(["base64-", "base64-!!", "%", "%7B", "[]"])))
            notes.append(f"garbage cookie {name}={value!r}")
            pairs += _chunk_names(draw, name, value)
    headers: list[tuple[str, str]] = []
    if pairs:
        order = draw(st.permutations(pairs))
        headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in order)))
    scheme_kind = draw(st.sampled_from(auth))
    if scheme_kind == "jwt":
        spec = draw(jwt_specs())
        token, sub = sign_jwt(spec, gw)
        if not spec.forged:
            tokens.add(token.strip())
            subs |= {sub} if sub else set()
        scheme = draw(st.sampled_from(["Bearer", "Bearer", "bearer", "BEARER", "Bearer "]))
        headers.append(("Authorization", f"{scheme} {token}"))
        notes.append(f"Authorization {scheme}: {spec}")
    elif scheme_kind == "jwe":
        claims = draw(session_claims)
        tokens |= offered_tokens(claims)
        value = seal(draw(st.sampled_from(["v4", "v5"])), dump(claims), "authjs.session-token")
        headers.append(("Authorization", "Bearer " + urllib.parse.quote(value, safe="")))
        notes.append(f"Authorization JWE: {dump(claims)[:300]}")
    elif scheme_kind == "odd":
        value = draw(st.sampled_from(["Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer\tx", "Bearer a b", "x"]))
        headers.append(("Authorization", value))
        notes.append(f"Authorization {value!r}")
    return Credentials(tuple(headers), frozenset(tokens), frozenset(subs), tuple(notes))


# -- multipart -----------------------------------------------------------------------------

_BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
boundaries = st.one_of(
    st.sampled_from(["XyZ", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a", "b=c", "()"]),
    st.text(_BCHARS, min_size=1, max_size=70),
)
_EOLS = [b"\r\n"] * 6 + [b"\n", b"\r", b"\n\r"]
_END_OF_HEADERS = [b"\r\n\r\n"] * 6 + [b"\n\n", b"\r\n\n", b"\n\r\n", b"\r\r", b"\r\n\r\r\n"]
field_names = st.one_of(
    st.just("user"),  # the name that matters, written in each of the ways `_disposition` knows
    st.sampled_from(["file", "user", "User", "USER", "user ", "a", "note", "usér", "user\x00"]),
    st.text(string.ascii_letters + ";\"\\%*' =é", min_size=1, max_size=6),
)


@dataclasses.dataclass(frozen=True)
class MultipartCase:
    boundary: str
    content_type: str  # as the browser sends it
    body: bytes
    names: frozenset[str]  # every field name written anywhere in the body
    cuts: tuple[int, ...]  # where the body is split into the chunks the guard sees


def _disposition(draw: st.DrawFn, name: str) -> tuple[bytes, set[str]]:
    """A Content-Disposition line naming ``name`` in one of the ways parsers read names."""
    form = draw(st.sampled_from(["quoted", "quoted", "bare", "star", "continued", "continued-star", "twice", "none"]))
    header = draw(
        st.sampled_from(["Content-Disposition", "content-disposition", "CONTENT-DISPOSITION", "Content-Disposition "])
    )
    names = {name}
    if form == "quoted":
        param = f'name="{name}"'
    elif form == "bare":
        param = f"name={name}"
    elif form == "star":
        param = f"name*=utf-8''{urllib.parse.quote(name)}"
    elif form in ("continued", "continued-star"):
        # RFC 2231 continuations: name*0, name*1, ... (Tornado's parser joins them).
        cut = draw(st.integers(0, len(name)))
        star = "*" if form == "continued-star" else ""
        first = f"name*0{star}=" + (f"utf-8''{urllib.parse.quote(name[:cut])}" if star else f'"{name[:cut]}"')
        param = f'{first}; name*1="{name[cut:]}"'
    elif form == "twice":
        other = draw(field_names)
        names.add(other)
        param = f'name="{other}"; name="{name}"'
    else:
        param = ""
    filename = draw(
        st.sampled_from(["", '; filename="a.txt"', "; filename*=utf-8''%C3%A9.txt", '; filename="x"; name="user"'])
    )
    if "user" in filename:
        names.add("user")
    line = f"{header}: form-data; {param}{filename}" if param else f"{header}: form-data{filename}"
    return line.encode("utf-8"), names


@st.composite
def multipart_cases(draw: st.DrawFn) -> MultipartCase:
    """Forms in every line-ending and header variant: LF or bare CR where CRLF belongs, header
    blocks ended by LF LF or CRLF LF, folded headers, ``name*=`` and RFC 2231 continuations,
    delimiters smuggled into file contents, preambles and epilogues."""
    boundary = draw(boundaries)
    dashes = b"--" + boundary.encode()
    names: set[str] = set()
    body = b""
    if draw(st.integers(0, 9)) == 0:
        body += draw(st.sampled_from([b"preamble\r\n", b"\r\n", b" "]))
    for _ in range(draw(st.integers(1, 3))):
        eol = draw(st.sampled_from(_EOLS))
        lines, part_names = [], set()
        disposition, seen = _disposition(draw, draw(field_names))
        part_names |= seen
        if draw(st.integers(0, 4)) == 0:  # folded: the parameters on a continuation line
            head, _, rest = disposition.partition(b";")
            disposition = head + b";" + draw(st.sampled_from(_EOLS)) + draw(st.sampled_from([b" ", b"\t"])) + rest
        lines.append(disposition)
        if draw(st.booleans()):
            lines.append(b"Content-Type: text/plain")
        if draw(st.integers(0, 5)) == 0:
            extra, seen = _disposition(draw, draw(field_names))
            lines.append(extra)  # a second Content-Disposition
            part_names |= seen
        names |= part_names
        content = draw(st.binary(max_size=24))
        if draw(st.integers(0, 4)) == 0:  # something delimiter-like inside the content
            smuggled, seen = _disposition(draw, draw(field_names))
            names |= seen
            lead = draw(st.sampled_from([b"\n", b"\r", b"\r\n", b""]))
            content += lead + dashes + draw(st.sampled_from(_EOLS)) + smuggled + b"\r\n\r\nx"
        body += dashes + eol + eol.join(lines) + draw(st.sampled_from(_END_OF_HEADERS)) + content
        body += draw(st.sampled_from(_EOLS))
    body += dashes + b"--"
    if draw(st.booleans()):
        body += b"\r\n"
    if draw(st.integers(0, 6)) == 0:
        smuggled, seen = _disposition(draw, draw(field_names))
        names |= seen
        body += dashes + b"\r\n" + smuggled + b"\r\n\r\nx\r\n" + dashes + b"--\r\n"  # parts after the end
    quoted = draw(st.booleans())
    content_type = (
        f'multipart/form-data; boundary="{boundary}"' if quoted else f"multipart/form-data; boundary={boundary}"
    )
    cuts = tuple(sorted({position(draw, len(body)) for _ in range(draw(st.integers(0, 4)))}))
    return MultipartCase(boundary, content_type, body, frozenset(names), cuts)


def chunks(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]
