"""Sensitive content that must not be shared between users through the cache.

A cached answer is served to whoever asks a close question next, so an answer (or prompt) that carries one
user's card number, bank account, credential or contact details must not be stored. `find_sensitive` finds
such items by shape and checksum; `NeverCache` applies it to a prompt and every string of a JSON response.

Every pattern starts at the beginning of a token (a lookbehind) and its repetitions are bounded or match one
way only, so a scan is linear in the length of the text: 1 MB of digits, spaces, '@' or dots takes 0.05-0.2 s.
Substring and regex prefilters run before the checksums (Luhn, mod-97) and the entropy test. Measured by
benchmarks/sensitive_false_positives.py on one core: 18 µs per 1 KB of prose and 31 µs per 1 KB of an answer
dense with numbers and code with the defaults (30 and 48 µs with e-mails and phones on), 2 µs per short question.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

REASONS = ("payment_card", "iban", "secret", "private_key", "email", "phone")


@dataclass(frozen=True)
class SensitiveFinding:
    """A sensitive item: why (`reason`, one of `REASONS`) and where (`start`, `end`); never its value."""

    reason: str
    start: int
    end: int


# --- payment cards -------------------------------------------------------------------------------------------
# 13-19 digits, contiguous or in groups of one separator (4-4-4-4, 4-6-5, 4-6-4, 4-4-4-4-3, ...). Not next to a
# word character, and not a part of a decimal number, a date, a range or a longer sequence of grouped numbers.
# Every pattern of this module starts with a character class and checks the character before it with a
# lookbehind: the regex engine then skips in C to the next candidate character instead of trying every position.
_CARD_AFTER_FIRST_DIGIT = (
    r"(?<![\w.,+/\-][0-9])(?:"
    r"[0-9]{12,18}"  # contiguous
    r"|(?<![0-9][ \u00a0\-][0-9])[0-9]{3}(?P<sep>[ \u00a0\-])[0-9]{4,6}(?:(?P=sep)[0-9]{4,6}){0,2}"
    r"(?P=sep)[0-9]{1,6}(?![0-9])(?!(?P=sep)[0-9])"  # grouped by one separator
    r")(?![\w]|[.,/\-][0-9])"
)
_L13_19 = frozenset(range(13, 20))
_L14_19 = frozenset(range(14, 20))
_L16_19 = frozenset(range(16, 20))
_L16 = frozenset({16})
# (lowest prefix, highest prefix, valid lengths): the issuer identification ranges of the major networks.
_CARD_ISSUERS: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", _L16),  # Mastercard
    ("2221", "2720", _L16),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),  # American Express
    ("6011", "6011", _L16_19),  # Discover
    ("644", "649", _L16_19),  # Discover
    ("65", "65", _L16_19),  # Discover, RuPay
    ("300", "305", _L14_19),  # Diners Club
    ("3095", "3095", _L14_19),  # Diners Club
    ("36", "36", _L14_19),  # Diners Club
    ("38", "39", _L14_19),  # Diners Club
    ("3528", "3589", _L16_19),  # JCB
    ("62", "62", _L16_19),  # UnionPay
    ("81", "82", _L16_19),  # UnionPay, RuPay
    ("60", "60", _L16),  # RuPay
    ("508", "508", _L16),  # RuPay
    ("2200", "2204", _L16_19),  # Mir
    ("5018", "5018", _L13_19),  # Maestro
    ("5020", "5020", _L13_19),  # Maestro
    ("5038", "5038", _L13_19),  # Maestro
    ("5893", "5893", _L13_19),  # Maestro
    ("6304", "6304", _L13_19),  # Maestro
    ("6759", "6759", _L13_19),  # Maestro
    ("6761", "6763", _L13_19),  # Maestro
    ("506099", "506198", frozenset({16, 18, 19})),  # Verve
    ("507865", "507964", frozenset({16, 18, 19})),  # Verve
    ("9792", "9792", _L16),  # Troy
)


def _known_issuer(digits: str) -> bool:
    length = len(digits)
    return any(length in lengths and low <= digits[: len(low)] <= high for low, high, lengths in _CARD_ISSUERS)


_DOUBLED = str.maketrans("0123456789", "0246813579")  # a digit doubled, its two digits summed


def _luhn_valid(digits: str) -> bool:
    kept, doubled = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(kept.encode()) + sum(doubled.encode()) - 48 * len(digits)) % 10 == 0


# --- IBANs ---------------------------------------------------------------------------------------------------
# Lengths from the SWIFT IBAN registry. Written contiguous (electronic format) or in groups of four characters
# separated by single spaces (print format).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BI": 27,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21,
    "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_DIGITS = str.maketrans({chr(code): str(code - 55) for code in range(65, 91)})  # A=10 ... Z=35


def _alternatives(countries: list[str]) -> str:
    """`["GB", "GE", "DE"]` -> `"D[E]|G[BE]"`: one comparison per first letter."""
    by_first: dict[str, str] = {}
    for country in countries:
        by_first[country[0]] = by_first.get(country[0], "") + country[1]
    return "|".join(f"{first}[{seconds}]" for first, seconds in sorted(by_first.items()))


def _bban(length: int) -> str:
    """A BBAN of `length` characters: contiguous, or in groups of four after a space (the print format)."""
    grouped = " [A-Z0-9]{4}" * (length // 4) + (f" [A-Z0-9]{{{length % 4}}}" if length % 4 else "")
    return f"(?:[A-Z0-9]{{{length}}}|{grouped})"


def _iban_after_first_check_digit() -> str:
    """Found by its check digits (digits are rarer than capitals), then the BBAN of its country's length."""
    countries_by_length: dict[int, list[str]] = {}
    for country, length in sorted(_IBAN_LENGTHS.items()):
        countries_by_length.setdefault(length, []).append(country)
    branches = "|".join(
        rf"(?<=(?:{_alternatives(countries)})[0-9])[0-9]{_bban(length - 4)}"
        for length, countries in sorted(countries_by_length.items())
    )
    return rf"(?<=[A-Z]{{2}}[0-9])(?<![A-Za-z0-9][A-Z]{{2}}[0-9])(?:{branches})(?![A-Za-z0-9])"


def _mod97_valid(iban: str) -> bool:
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


# Cards and IBANs from one scan of the digits: a card starts after a non-word character, an IBAN's first check
# digit after two capitals, so at most one of them matches at any digit.
_ACCOUNT_NUMBER = re.compile(
    rf"[0-9](?:{_CARD_AFTER_FIRST_DIGIT}|(?P<iban>{_iban_after_first_check_digit()}))", re.ASCII
)


def _find_account_number(text: str) -> SensitiveFinding | None:
    """The first payment card number or IBAN."""
    for match in _ACCOUNT_NUMBER.finditer(text):
        if match.group("iban") is not None:
            start = match.start() - 2
            if _mod97_valid(text[start : match.end()].replace(" ", "")):
                return SensitiveFinding("iban", start, match.end())
            continue
        separator = match.group("sep")
        digits = match.group(0) if separator is None else match.group(0).replace(separator, "")
        if 13 <= len(digits) <= 19 and _luhn_valid(digits) and _known_issuer(digits):
            return SensitiveFinding("payment_card", match.start(), match.end())
    return None


# --- secrets -------------------------------------------------------------------------------------------------
_SECRET_HINT_A = re.compile(r"A(?:KIA|SIA|Iza)")
_SECRET_HINT_GH = re.compile(r"g(?:h[pousr]_|ithub_pat_)")
_SECRET = re.compile(
    r"""[Agxsre](?<![A-Za-z0-9_\-][Agxsre])(?:
        (?<=A)(?:KIA|SIA)[A-Z0-9]{16}                                    # AWS access key id
      | (?<=g)h[pousr]_[A-Za-z0-9]{36,251}                               # GitHub token
      | (?<=g)ithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}                  # GitHub fine-grained token
      | (?<=x)ox[abpr]-[0-9]{6,20}-[A-Za-z0-9\-]{8,255}                  # Slack token
      | (?<=[sr])k_live_[A-Za-z0-9]{20,247}                              # Stripe live secret / restricted key
      | (?<=s)k-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,250}            # OpenAI project / service key
      | (?<=s)k-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{40,250}         # Anthropic key
      | (?<=s)k-([A-Za-z0-9]{32,250})                                    # OpenAI legacy key (checked below)
      | (?<=A)Iza[0-9A-Za-z_\-]{35}                                      # Google API key
      | (?<=e)yJ[A-Za-z0-9_\-]{8,4096}\.eyJ[A-Za-z0-9_\-]{8,8192}\.[A-Za-z0-9_\-]{16,1024}  # JWT
    )(?![A-Za-z0-9_\-])""",
    re.ASCII | re.VERBOSE,
)
# `name = value`, `"name": "value"`, `name: value`, `?name=value`, where the name contains a keyword: found by
# the operator and a long value, then the name before the operator is checked.
_ASSIGNED_VALUE = re.compile(r"[:=](?:=|>)?[ \t]{0,5}[\"']?([A-Za-z0-9_\-+/=.!@#%^*~]{16,256})", re.ASCII)
_SECRET_NAME = re.compile(
    r"(?:api[_\-]?key|apikey|access[_\-]?key|private[_\-]?key|secret|passw(?:or)?d|pwd|token|credential)"
    r"[A-Za-z0-9_.\-]{0,30}[\"']?[ \t]{0,5}\Z",
    re.ASCII | re.IGNORECASE,
)
_PLACEHOLDER_WORDS = ("your", "example", "placeholder", "changeme", "xxxx", "redacted", "dummy", "sample", "here")
_MIN_ENTROPY_BITS = 3.0


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    length = len(value)
    return -sum(count / length * math.log2(count / length) for count in Counter(value).values())


# A reference, not a value: "settings.OPENAI_API_KEY_V2", "self.secretKey2024", "my_token_2" (words of two or
# more letters or single letters, digits only at their end). Random credentials almost never split like this.
# Case changes delimit the words, so a value matches in one way only (no backtracking blow-up).
_WORDS = r"(?:[A-Z]*(?:[a-z]{2,}[A-Z]+)*(?:[a-z]{2,})?|[a-z])[0-9]*"
_IDENTIFIER = re.compile(rf"{_WORDS}(?:[._\-]{_WORDS})*")


def _high_entropy(value: str) -> bool:
    """A random-looking credential: letters and digits mixed, at least 3 bits a character, not a placeholder."""
    if not (any(char.isdigit() for char in value) and any(char.isalpha() for char in value)):
        return False
    lower = value.lower()
    return (
        not any(word in lower for word in _PLACEHOLDER_WORDS)
        and _entropy(value) >= _MIN_ENTROPY_BITS
        and _IDENTIFIER.fullmatch(value) is None
    )


def _find_secret(text: str) -> SensitiveFinding | None:
    found: SensitiveFinding | None = None
    if (
        "xox" in text
        or "k_live_" in text
        or "sk-" in text
        or "eyJ" in text
        or _SECRET_HINT_A.search(text) is not None
        or _SECRET_HINT_GH.search(text) is not None
    ):
        for match in _SECRET.finditer(text):
            legacy = match.group(1)
            if legacy is None or _high_entropy(legacy):
                found = SensitiveFinding("secret", match.start(), match.end())
                break
    if "=" in text or ":" in text:
        for match in _ASSIGNED_VALUE.finditer(text):
            if found is not None and match.start(1) >= found.start:
                break
            value, end = match.group(1), match.end(1)
            if (
                text[end : end + 1] not in ("(", "[")
                and _SECRET_NAME.search(text, max(match.start() - 48, 0), match.start()) is not None
                and _high_entropy(value)
            ):
                return SensitiveFinding("secret", match.start(1), end)
    return found


# --- PEM private keys ----------------------------------------------------------------------------------------
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----", re.ASCII)
_PEM_END = re.compile(r"-----END [A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----", re.ASCII)
# The header must be followed by a body (optionally after "Proc-Type:"-like header lines), also when the key
# sits in JSON text with escaped line breaks; a lone header ("your file starts with -----BEGIN ...") is not a key.
_PEM_BODY = re.compile(r"(?:\s|\\[rn])*(?:[A-Za-z\-]{1,30}:[^\n]{0,200}\n(?:\s|\\[rn])*){0,5}[A-Za-z0-9+/]{32}")


def _find_private_key(text: str) -> SensitiveFinding | None:
    if "-----BEGIN" not in text:
        return None
    for match in _PEM_BEGIN.finditer(text):
        body = _PEM_BODY.match(text, match.end())
        if body is not None:
            end = _PEM_END.search(text, body.end(), body.end() + 20_000)
            return SensitiveFinding("private_key", match.start(), body.end() if end is None else end.end())
    return None


# --- e-mail addresses ----------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-](?<![A-Za-z0-9._%+\-][A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]{0,63}@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24}))(?![A-Za-z0-9\-])",
    re.ASCII,
)
# Documentation domains (RFC 2606 / 6761), "git@host" SSH remotes and "icon@2x.png"-like file names.
_RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
_RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost", ".local")
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "css", "js", "ts", "json", "html", "htm", "txt",
     "pdf", "yaml", "yml", "xml", "lock", "map", "py", "rb", "java", "php", "vue", "jsx", "tsx"}
)  # fmt: skip


def _find_email(text: str) -> SensitiveFinding | None:
    if "@" not in text:
        return None
    for match in _EMAIL.finditer(text):
        domain, tld = match.group(1).lower(), match.group(2).lower()
        if (
            tld in _FILE_EXTENSIONS
            or domain in _RESERVED_DOMAINS
            or domain.endswith(tuple("." + name for name in _RESERVED_DOMAINS) + _RESERVED_SUFFIXES)
            or text[match.start() : match.start() + 4] == "git@"
        ):
            continue
        return SensitiveFinding("email", match.start(), match.end())
    return None


# --- phone numbers -------------------------------------------------------------------------------------------
# International (+ and a country code), North American ((415) 555-0123, 415-555-0123, 415.555.0123) and
# trunk-prefixed national numbers (020 7946 0958, 06 12 34 56 78, 0151-234-5678) with separators, and
# contiguous numbers right after a word such as "phone" or "tel". Separators are mandatory between groups, so
# plain numbers, years, prices ("$1,234,567.89"), dates ("2024-01-15", "01.02.2024"), times, version strings
# and ranges ("1990-2000") do not match.
_PHONE_TAIL = r"(?![\w]|[.,\-/:][0-9])"
_PHONE_INTERNATIONAL = re.compile(
    r"\+(?<![\w+.,/\-]\+)(?=[0-9 .\-()]{8})[1-9][0-9]{0,14}"  # + and 8 or more phone characters
    r"(?:[ .\-]?\([0-9]{1,5}\)[ .\-]?[0-9]{1,8})?"  # +44 (0)20 ..., +1 (415) 555 ...
    r"(?:[ .\-][0-9]{1,8}){0,6}" + _PHONE_TAIL,
    re.ASCII,
)
_EXCHANGE = r"[2-9][0-9]{2}[ .\-][0-9]{4}"
_TRUNK_GROUPS = r"\)?(?:[ .\-/][0-9]{2,8}){1,5}"
_PHONE_NATIONAL = re.compile(
    r"[(0-9](?<![\w+.,/\-][(0-9])(?<![0-9][ .\-][(0-9])(?:"
    rf"(?<=1)[ .\-]?(?:\([2-9][0-9]{{2}}\)[ .\-]?|[2-9][0-9]{{2}}[ .\-]){_EXCHANGE}"  # 1 415 555 0123
    rf"|(?<=\()[2-9][0-9]{{2}}\)[ .\-]?{_EXCHANGE}"  # (415) 555-0123
    rf"|(?<=[2-9])[0-9]{{2}}[ .\-]{_EXCHANGE}"  # 415-555-0123
    rf"|(?<=\()0[0-9]{{1,4}}{_TRUNK_GROUPS}"  # (020) 7946 0958
    rf"|(?<=0)[0-9]{{1,4}}{_TRUNK_GROUPS}"  # 020 7946 0958, 06 12 34 56 78
    r"|(?<=[0-9])(?P<contiguous>[0-9]{7,14})"  # 4155550123, only right after a phone word
    r")" + _PHONE_TAIL,
    re.ASCII,
)
_PHONE_WORD = re.compile(
    r"(?<![A-Za-z])(?:telephone|cellphone|phone|mobile|whatsapp|contact|call|tel|cell|fax)"
    r"(?:[ \t]*(?:number|num|nr|no))?\.?[ \t]{0,3}[:#]?[ \t]{0,3}\Z",
    re.ASCII | re.IGNORECASE,
)


def _find_phone(text: str) -> SensitiveFinding | None:
    best: SensitiveFinding | None = None
    for match in _PHONE_INTERNATIONAL.finditer(text):
        if 8 <= sum(char.isdigit() for char in match.group(0)) <= 15:  # E.164: at most 15 digits
            best = SensitiveFinding("phone", match.start(), match.end())
            break
    for match in _PHONE_NATIONAL.finditer(text):
        if best is not None and match.start() >= best.start:
            break
        number = match.group(0).lstrip("(")
        if match.group("contiguous") is not None:
            if _PHONE_WORD.search(text, max(match.start() - 32, 0), match.start()) is None:
                continue
        elif number[0] == "0":  # trunk prefix 0, or international prefix 00 (+ up to 15 digits)
            digits = sum(char.isdigit() for char in number)
            if not (10 <= digits <= 17 if number.startswith("00") else 9 <= digits <= 12):
                continue
        return SensitiveFinding("phone", match.start(), match.end())
    return best


_ALWAYS: tuple[Callable[[str], SensitiveFinding | None], ...] = (
    _find_account_number,
    _find_secret,
    _find_private_key,
)


def find_sensitive(text: str, *, emails: bool = False, phones: bool = False) -> SensitiveFinding | None:
    """The first sensitive item in `text`, or None.

    Always on: payment card numbers (13-19 digits, contiguous or grouped by spaces or dashes, a known issuer
    prefix and length, Luhn checked), IBANs (country code, check digits and the country's length, mod-97
    checked), secrets (AWS access key ids AKIA/ASIA..., GitHub ghp_/gho_/ghu_/ghs_/ghr_/github_pat_, Slack
    xox[abpr]-, Stripe sk_live_/rk_live_, OpenAI sk-.../sk-proj-..., Anthropic sk-ant-..., Google AIza..., JWTs,
    and `api_key=`/`secret:`/`password=`/`token=`-like assignments whose value is 16+ characters of mixed letters
    and digits with at least 3 bits of entropy a character) and PEM private keys (a "-----BEGIN ... PRIVATE
    KEY-----" header followed by a key body). Optional: e-mail addresses (not documentation domains such as
    example.com, not "git@host") and phone numbers (E.164 or common national formats with at least 8 digits;
    not plain years, prices, dates, version numbers or short counts). About 20-30 µs per 1 KB with the defaults
    and 30-50 µs with both options (one core).
    """
    finders: list[Callable[[str], SensitiveFinding | None]] = list(_ALWAYS)
    if emails:
        finders.append(_find_email)
    if phones:
        finders.append(_find_phone)
    best: SensitiveFinding | None = None
    for finder in finders:
        found = finder(text)
        if found is not None and (best is None or found.start < best.start):
            best = found
    return best


_SEPARATOR = "\n\x00\n"


class NeverCache:
    """The default `never_cache` predicate: `(prompt, response) -> reason | None` (e.g. "payment_card").

    Checks the prompt, then every string inside the response (any JSON value, dict keys included), walking
    dicts, lists and tuples iteratively: no recursion limit, and a container met twice is checked once.
    """

    def __init__(self, *, emails: bool = False, phones: bool = False) -> None:
        self.emails = emails
        self.phones = phones

    def __repr__(self) -> str:
        return f"NeverCache(emails={self.emails}, phones={self.phones})"

    def __call__(self, prompt: str, response: object) -> str | None:
        texts: list[str] = []
        stack: list[object] = [response, prompt]
        seen: set[int] = set()
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                if id(value) not in seen:
                    seen.add(id(value))
                    for key, item in reversed(list(value.items())):
                        stack.append(item)
                        stack.append(key)
            elif isinstance(value, (list, tuple)) and id(value) not in seen:
                seen.add(id(value))
                stack.extend(reversed(value))
        # One scan of all the strings (many small strings cost one call, not one each). No pattern crosses the
        # separator: none matches a NUL, and none spans a line break around it.
        found = find_sensitive(_SEPARATOR.join(texts), emails=self.emails, phones=self.phones)
        return None if found is None else found.reason
