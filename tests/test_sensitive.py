"""Sensitive content kept out of the cache: cards, IBANs, secrets, private keys, and optionally e-mails and phones.

Every value here is synthetic: published test card numbers and example IBANs, and secrets generated at run time
in the documented shapes (no real credential appears in this file).
"""

from __future__ import annotations

import base64
import json
import random
import string
import time

import pytest

from semantic_llm_cache.sensitive import REASONS, NeverCache, SensitiveFinding, find_sensitive

ALNUM = string.ascii_letters + string.digits
_random = random.Random(20240501)


def fake(alphabet: str, length: int) -> str:
    return "".join(_random.choice(alphabet) for _ in range(length))


def luhn_complete(prefix: str, length: int) -> str:
    """`prefix` padded with random digits to `length`, the last one a valid Luhn check digit."""
    body = prefix + fake(string.digits, length - len(prefix) - 1)
    for check in string.digits:
        digits = body + check
        total = sum(
            (int(d) * 2 - 9 if int(d) > 4 else int(d) * 2) if i % 2 else int(d) for i, d in enumerate(reversed(digits))
        )
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def iban_complete(country: str, bban: str) -> str:
    """A valid IBAN for `bban`: the check digits computed by ISO 13616 mod-97."""
    numeric = "".join(str(int(char, 36)) for char in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def grouped(value: str, size: int = 4, separator: str = " ") -> str:
    return separator.join(value[i : i + size] for i in range(0, len(value), size))


def reason(text: str, **options: bool) -> str | None:
    found = find_sensitive(text, **options)
    return None if found is None else found.reason


# --- payment cards -------------------------------------------------------------------------------------------

TEST_CARDS = [
    "4111111111111111",  # Visa
    "4012888888881881",  # Visa
    "4222222222222",  # Visa, 13 digits
    "5555555555554444",  # Mastercard
    "5105105105105100",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "378282246310005",  # American Express
    "371449635398431",  # American Express
    "6011111111111117",  # Discover
    "6011000990139424",  # Discover
    "30569309025904",  # Diners Club
    "3530111333300000",  # JCB
]


@pytest.mark.parametrize("card", TEST_CARDS)
def test_test_card_numbers_are_found_contiguous_spaced_and_dashed(card: str) -> None:
    groups = [card[:4], card[4:10], card[10:]] if len(card) == 15 else [card[i : i + 4] for i in range(0, len(card), 4)]
    for written in (card, " ".join(groups), "-".join(groups)):
        text = f"Your card {written} was charged."
        assert find_sensitive(text) == SensitiveFinding("payment_card", 10, 10 + len(written)), written


@pytest.mark.parametrize(
    "text",
    [
        "card: 4111 1111 1111 1111, exp 12/29",
        '{"card_number": "5555-5555-5555-4444"}',
        "Amex 3782 822463 10005 on file",
        "Charged to 4242424242424242.",
        "cards 4111111111111111 4242424242424242",
        "(6011 1111 1111 1117)",
        "card=4111\u00a01111\u00a01111\u00a01111",
    ],
)
def test_cards_in_context(text: str) -> None:
    assert reason(text) == "payment_card"


def test_generated_card_numbers_of_every_network_are_found() -> None:
    for prefix, length in [("4", 16), ("4", 19), ("51", 16), ("2720", 16), ("34", 15), ("65", 16), ("3528", 16),
                           ("62", 19), ("2200", 16), ("6759", 18), ("36", 14)]:  # fmt: skip
        for _ in range(20):
            card = luhn_complete(prefix, length)
            assert reason(f"pay with {card} now") == "payment_card", card


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn-invalid
        "4111 1111 1111 1112",
        "5555-5555-5555-4445",
        "1234567812345670",  # Luhn-valid, no issuer starts with 1
        "9000000000000009",  # Luhn-valid, no issuer starts with 90
        "Order #1002003004005006 shipped",
        "order number 2023100512345678",
        "ISBN 978-3-16-148410-0",
        "ISBN 9783161484100",
        "timestamp 1700000000000 ms",
        "account 41111111111111110001",  # 20 digits: longer than any card
        "4111 1111 1111 1111 1111",  # five groups of four: not a card layout
        "pi is 3.4111111111111111",
        "v4111111111111111",
        "SKU-4111111111111111",
        "$4,111,111,111,111,111",
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
        "2024-01-15 2024-02-15 2024-03-15",
    ],
)
def test_numbers_that_are_not_cards(text: str) -> None:
    assert find_sensitive(text, emails=True, phones=True) is None


# --- IBANs ---------------------------------------------------------------------------------------------------

EXAMPLE_IBANS = [
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "FR1420041010050500013M02606",
    "NL91ABNA0417164300",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "BE68539007547034",
    "CH9300762011623852957",
    "NO9386011117947",
    "AT611904300234573201",
    "PL61109010140000071219812874",
]


@pytest.mark.parametrize("iban", EXAMPLE_IBANS)
def test_ibans_are_found_in_electronic_and_print_format(iban: str) -> None:
    for written in (iban, grouped(iban)):
        text = f"Transfer to {written}, thanks"
        assert find_sensitive(text) == SensitiveFinding("iban", 12, 12 + len(written)), written


def test_generated_ibans_are_found_and_any_changed_character_is_not() -> None:
    for country, length in [("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("MT", 31), ("RU", 33), ("NO", 15)]:
        bban = fake(string.digits, length - 4)
        iban = iban_complete(country, bban)
        assert reason(f"IBAN: {iban}") == "iban"
        assert reason(f"IBAN: {grouped(iban)}") == "iban"
        changed = iban[:5] + str((int(iban[5]) + 1) % 10) + iban[6:]
        assert reason(f"IBAN: {changed}") is None


@pytest.mark.parametrize(
    "text",
    [
        "DE88370400440532013000",  # wrong check digits
        "DE89 3704 0044 0532 0130 001",  # too long for DE
        "DE89 3704 0044 0532 0130 0",  # too short for DE
        "XX89370400440532013000",  # no such country
        "ADE89370400440532013000",  # inside a longer token
        "de89370400440532013000",  # IBANs are written in capitals
        "GB2023 annual report, COVID19 cases, MP3 files",
    ],
)
def test_not_ibans(text: str) -> None:
    assert find_sensitive(text) is None


# --- secrets -------------------------------------------------------------------------------------------------


def jwt() -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signature = base64.urlsafe_b64encode(_random.randbytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': '1234567890', 'name': 'Test User'})}.{signature}"


SECRETS = {
    "aws": lambda: "AKIA" + fake(string.ascii_uppercase + string.digits, 16),
    "aws_sts": lambda: "ASIA" + fake(string.ascii_uppercase + string.digits, 16),
    "github_classic": lambda: "ghp_" + fake(ALNUM, 36),
    "github_oauth": lambda: "gho_" + fake(ALNUM, 36),
    "github_server": lambda: "ghs_" + fake(ALNUM, 36),
    "github_fine_grained": lambda: "github_pat_" + fake(ALNUM, 22) + "_" + fake(ALNUM, 59),
    "slack_bot": lambda: f"xoxb-{fake(string.digits, 12)}-{fake(string.digits, 13)}-{fake(ALNUM, 24)}",
    "slack_user": lambda: f"xoxp-{fake(string.digits, 12)}-{fake(string.digits, 12)}-{fake(string.hexdigits, 32)}",
    "stripe_secret": lambda: "sk_live_" + fake(ALNUM, 24),
    "stripe_restricted": lambda: "rk_live_" + fake(ALNUM, 99),
    "openai_legacy": lambda: "sk-" + fake(ALNUM, 48),
    "openai_project": lambda: "sk-proj-" + fake(ALNUM + "_-", 156),
    "anthropic": lambda: "sk-ant-api03-" + fake(ALNUM + "_-", 95),
    "google": lambda: "AIza" + fake(ALNUM + "_-", 35),
    "jwt": jwt,
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_secret_shapes_are_found(kind: str) -> None:
    secret = SECRETS[kind]()
    for text, start in [(secret, 0), (f"Use the key {secret} in the header.", 12), (f'"token":"{secret}"', 9)]:
        assert find_sensitive(text) == SensitiveFinding("secret", start, start + len(secret)), text
    assert reason(f"Authorization: Bearer {secret}") == "secret"


@pytest.mark.parametrize(
    "template",
    [
        "api_key = '{value}'",
        'API_KEY="{value}"',
        "export AWS_SECRET_ACCESS_KEY={value}",
        '{{"client_secret": "{value}"}}',
        "password: {value}",
        "DB_PASSWORD={value}",
        "https://host/cb?access_token={value}&x=1",
        "self.secret_key := {value}",
        "credentials => {value}",
    ],
)
def test_assignments_of_high_entropy_values_are_secrets(template: str) -> None:
    value = fake(ALNUM, 32)
    text = template.format(value=value)
    assert find_sensitive(text) == SensitiveFinding("secret", text.index(value), text.index(value) + len(value))


@pytest.mark.parametrize(
    "text",
    [
        "Use sk-learn or scikit-learn for that; a risk-free, task-based approach with sk- prefixes.",
        "The sk-" + "a" * 40 + " key is not random",  # one letter repeated: no entropy
        "api_key=YOUR_API_KEY_HERE_12345",
        "password=changeme",
        "password = 'aaaaaaaaaaaaaaaa1'",
        "secret = os.environ['SECRET_KEY']",
        "api_key=${API_KEY}",
        "token = get_token_from_vault_2024()",
        "password: correct horse battery staple",
        "key_count = 12345678901234567890",
        "The token is stored in settings.SECRET_KEY_FILE_PATH",
        "api_key = settings.OPENAI_API_KEY_V2",  # references to a secret, not secrets
        "secret: process.env.STRIPE_SECRET_KEY_2",
        "password = self.passwordHash2024",
        "AKIA is a prefix of AWS access key ids",
        "eyJhbGciOiJIUzI1NiJ9 alone is only a base64 header",
        "ghp_short",
        # Ordinary identifiers and encodings.
        "id 123e4567-e89b-12d3-a456-426614174000",
        "commit 4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        base64.b64encode(b"The quick brown fox jumps over the lazy dog, twice over, for a test.").decode(),
        "sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_not_secrets(text: str) -> None:
    assert find_sensitive(text) is None


# --- PEM private keys ----------------------------------------------------------------------------------------


def pem(label: str, line_break: str = "\n") -> str:
    body = base64.b64encode(_random.randbytes(300)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return line_break.join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"])


@pytest.mark.parametrize("label", ["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                                   "ENCRYPTED PRIVATE KEY", "DSA PRIVATE KEY"])  # fmt: skip
def test_pem_private_keys_are_found_with_their_whole_span(label: str) -> None:
    key = pem(label)
    text = f"Here is the key:\n{key}\nKeep it safe."
    assert find_sensitive(text) == SensitiveFinding("private_key", 17, 17 + len(key))


def test_pem_keys_with_headers_or_escaped_line_breaks() -> None:
    encrypted = pem("RSA PRIVATE KEY").replace(
        "-----\n", "-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,0A1B2C3D4E5F60718293A4B5C6D7E8F9\n\n", 1
    )
    assert reason(encrypted) == "private_key"
    service_account = json.dumps({"type": "service_account", "private_key": pem("PRIVATE KEY")})
    assert "\\n" in service_account
    assert reason(service_account) == "private_key"
    assert reason(pem("PGP PRIVATE KEY BLOCK").replace("-----\n", "-----\nVersion: Test 1.0\n\n", 1)) == "private_key"


@pytest.mark.parametrize(
    "text",
    [
        "A PEM key file starts with -----BEGIN RSA PRIVATE KEY----- and ends with -----END RSA PRIVATE KEY-----.",
        "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
        pem("PUBLIC KEY"),
        pem("CERTIFICATE"),
    ],
)
def test_not_private_keys(text: str) -> None:
    assert find_sensitive(text) is None


# --- e-mail addresses (optional) -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["jane.doe@acme-mail.io", "j.smith+billing@sub.company.co.uk", "x_y%z@mail-7.example-corp.de"]
)
def test_emails_only_when_enabled(address: str) -> None:
    text = f"Write to {address}."
    assert find_sensitive(text) is None
    assert find_sensitive(text, emails=True) == SensitiveFinding("email", 9, 9 + len(address))


@pytest.mark.parametrize(
    "text",
    [
        "Contact user@example.com or admin@mail.example.org",
        "bob@host.test and alice@printer.local",
        "git clone git@github.com:org/repo.git",
        "icon@2x.png and logo@3x.webp",
        "@username mentioned @app.route('/')",
        "a @ b.com, foo@bar, name@domain.c",
    ],
)
def test_not_emails(text: str) -> None:
    assert find_sensitive(text, emails=True) is None


# --- phone numbers (optional) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "+1 415 555 0123",
        "+14155550123",
        "+1 (415) 555-0123",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+49 30 1234567",
        "+33 6 12 34 56 78",
        "(415) 555-0123",
        "415-555-0123",
        "415.555.0123",
        "1-415-555-0123",
        "020 7946 0958",
        "(020) 7946 0958",
        "06 12 34 56 78",
        "0151-234-5678",
        "0044 20 7946 0958",
    ],
)
def test_phones_only_when_enabled(number: str) -> None:
    text = f"Call {number} today"
    assert find_sensitive(text) is None
    assert find_sensitive(text, phones=True) == SensitiveFinding("phone", 5, 5 + len(number))


@pytest.mark.parametrize("text", ["phone: 4155550123", "Tel. 02079460958", "mobile no 9876543210", "fax:0201234567"])
def test_contiguous_phones_after_a_phone_word(text: str) -> None:
    assert reason(text, phones=True) == "phone"


@pytest.mark.parametrize(
    "text",
    [
        "It happened in 2024, between 1990-2000 and in the 1980s.",
        "Dates: 2024-01-15, 01.02.2024, 15/01/2024, 05.06.2023 10:30, 2023-10-05T14:30:00Z",
        "Prices: $1,234,567.89, 1,000,000 people, €12.345,67",
        "Versions 1.2.3, 10.0.19041.1234, v2.31.4567, 3.0.0.4.388_24243",
        "Host 192.168.100.200 port 8080, pi 3.14159265358979",
        "ISBN 978-3-16-148410-0, ISBN 0-306-40615-2, ZIP 94105-1234",
        "Order 4155550123 and ticket 12345678 (no phone word)",
        "page 12 of 300, 5 10 15 20, scores 98 87 76 65",
        "hotel 41555501234",
        "1+23456789012",
    ],
)
def test_not_phones(text: str) -> None:
    assert find_sensitive(text, emails=True, phones=True) is None


# --- the first finding, and NeverCache -----------------------------------------------------------------------


def test_the_first_item_is_reported() -> None:
    text = "Mail jane@acme-mail.io, card 4111 1111 1111 1111, key AKIA" + "Z" * 16
    assert find_sensitive(text) == SensitiveFinding("payment_card", 29, 48)
    assert find_sensitive(text, emails=True) == SensitiveFinding("email", 5, 22)
    assert {reason(value) for value in ("4111111111111111", EXAMPLE_IBANS[0], SECRETS["aws"](), pem("PRIVATE KEY"))} | {
        reason("a@acme-mail.io", emails=True),
        reason("+14155550123", phones=True),
    } == set(REASONS)


def test_never_cache_checks_the_prompt_and_every_string_of_the_response() -> None:
    never_cache = NeverCache()
    assert never_cache("What is my card?", "Your card is 4111 1111 1111 1111.") == "payment_card"
    assert never_cache(f"Pay to {EXAMPLE_IBANS[1]}", "Done.") == "iban"
    nested = {"choices": [{"message": {"role": "assistant", "content": ["ok", {"tool": (1, 2.5, None, True)}]}}]}
    assert never_cache("hello", nested) is None
    nested["choices"][0]["message"]["content"][1]["tool"] = (1, "key " + SECRETS["github_classic"]())  # type: ignore[index]
    assert never_cache("hello", nested) == "secret"
    assert never_cache("hello", {pem("PRIVATE KEY"): 1}) == "private_key"  # keys are strings too
    assert never_cache("hello", {"to": "jane@acme-mail.io", "tel": "+44 20 7946 0958"}) is None
    assert NeverCache(emails=True)("hello", {"to": "jane@acme-mail.io"}) == "email"
    assert NeverCache(phones=True)("hello", [["+44 20 7946 0958"]]) == "phone"
    assert never_cache("hello", None) is None
    assert repr(NeverCache(phones=True)) == "NeverCache(emails=False, phones=True)"


def test_never_cache_does_not_join_items_across_strings() -> None:
    never_cache = NeverCache(emails=True)
    key = pem("RSA PRIVATE KEY")
    header, body = key.split("\n", 1)
    split = [
        (["4111 1111", "1111 1111"], " "),
        (["DE89 3704 0044", "0532 0130 00"], " "),
        ([header, body], "\n"),
        (["api_key =", fake(ALNUM, 32)], " "),
        (["jane@", "acme-mail.io"], ""),
    ]
    for parts, joiner in split:
        assert never_cache("", parts) is None, parts
        assert never_cache("", joiner.join(parts)) is not None, parts
    assert NeverCache(phones=True)("", ["phone:", "4155550123"]) is None
    assert NeverCache(phones=True)("", "phone: 4155550123") == "phone"


def test_never_cache_walks_deep_and_cyclic_responses_without_recursion() -> None:
    deep: object = "4111-1111-1111-1111"
    for depth in range(200_000):
        deep = [deep] if depth % 2 else {"k": deep}
    assert NeverCache()("q", deep) == "payment_card"
    cyclic: list[object] = ["fine"]
    cyclic.append(cyclic)
    cyclic.append({"self": cyclic})
    assert NeverCache()("q", cyclic) is None


# --- linear time ---------------------------------------------------------------------------------------------

MEGABYTE = 1_000_000
_rng = random.Random(7)
HOSTILE_INPUTS = {
    "digits": "7" * MEGABYTE,
    "random digits": "".join(_rng.choices(string.digits, k=MEGABYTE)),
    "digit space": "1 " * (MEGABYTE // 2),
    "digits and spaces": "".join(_rng.choices(string.digits + " ", k=MEGABYTE)),
    "digit groups": "4111 " * (MEGABYTE // 5),
    "dashed groups": "4111-" * (MEGABYTE // 5),
    "Luhn-invalid cards": "4111111111111112 " * (MEGABYTE // 17),
    "at signs": "@" * MEGABYTE,
    "dots": "." * MEGABYTE,
    "at dot": "@." * (MEGABYTE // 2),
    "a at": "a@" * (MEGABYTE // 2),
    "a.a@": "a.a@" * (MEGABYTE // 4),
    "at dots digits spaces": "".join(_rng.choices("@. 1a", k=MEGABYTE)),
    "label run": "x@" + "a" * MEGABYTE,
    "IBAN prefixes": "DE89 " * (MEGABYTE // 5),
    "plus ones": "+1 " * (MEGABYTE // 3),
    "parentheses": "(0" * (MEGABYTE // 2),
    "jwt prefixes": "eyJaaaaaaaaaa." * (MEGABYTE // 14),
    "long token": "sk-" + "a1" * (MEGABYTE // 2),
    "assignments": "key=aaaaaaaaaaaaaaaaaaaaaaaaa1 " * (MEGABYTE // 31),
    "pem headers": "-----BEGIN RSA PRIVATE KEY-----\n" * (MEGABYTE // 32),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_INPUTS))
def test_megabyte_inputs_take_linear_time(name: str) -> None:
    # a scan that backtracks quadratically takes hours on a megabyte, a linear one well under a second: the
    # generous bound only has to tell those apart, also on a loaded CI machine (the speed is in benchmarks)
    text = HOSTILE_INPUTS[name]
    elapsed = float("inf")
    for _ in range(2):  # the best of two: the machine is shared
        started = time.perf_counter()
        find_sensitive(text, emails=True, phones=True)
        elapsed = min(elapsed, time.perf_counter() - started)
        if elapsed < 5.0:
            break
    assert elapsed < 5.0, f"{name}: {elapsed:.2f} s"
