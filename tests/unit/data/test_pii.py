"""PII scrubbing: precision and recall per type on real mail headers, the checks that keep false
positives out, and that no original value survives anywhere in the step's output."""

from __future__ import annotations

import email.utils
import ipaddress
import json
import re
import stat
from collections import Counter

import pyarrow as pa
import pytest

from llm.config import PiiConfig, build_config
from llm.data.pii import PSEUDONYM_KEY_ENV, PiiStep, Scrubber, iban_ok, luhn_ok
from llm.errors import UserError
from llm.lineage import redact
from llm.secrets import with_pseudonym_key

ADDRESS_FIELDS = ("from", "to", "cc", "reply-to", "return-path", "sender", "delivered-to", "errors-to")
IP_FIELDS = ("received", "x-originating-ip", "x-sender-ip")


def _header_fields(text: str) -> list[tuple[str, str]]:
    """(name, value) of each header field of a raw mail, continuation lines joined."""
    head = text.split("\n\n", 1)[0]
    fields: list[tuple[str, str]] = []
    for line in head.splitlines():
        if line[:1] in (" ", "\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + "\n" + line)
        elif ":" in line:
            name, value = line.split(":", 1)
            fields.append((name.strip().lower(), line))
    return fields


class Quiet(list):
    """A list of labelled units whose repr gives only its length, so that a failing test's report
    never prints the real text or the values labelled in it."""

    def __repr__(self) -> str:
        return f"<{len(self)} labelled units>"


def labelled_units(shared_data) -> list[dict]:
    """Header fields of the real mails with their PII labelled by methods other than the scrubber's:
    addresses by the standard library's address parser, IPs by splitting on delimiters and asking
    `ipaddress` whether each token is a global address."""
    units = []
    for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines():
        for name, field in _header_fields(json.loads(line)["text"]):
            if name in ADDRESS_FIELDS:
                value = field.split(":", 1)[1]
                addrs = [a for _, a in email.utils.getaddresses([value]) if "@" in a]
                gold = [a for a in addrs if re.search(r"@[\w.-]+\.[A-Za-z]{2,}$", a)]  # internet addresses only
                units.append({"text": field, "kind": "email", "gold": gold})
            elif name in IP_FIELDS:
                tokens = re.split(r"[\s\[\]()<>;,=@]+", field)
                gold = []
                for tok in tokens:
                    try:
                        addr = ipaddress.ip_address(tok)
                    except ValueError:
                        continue
                    if addr.is_global:
                        gold.append(tok)
                units.append({"text": field, "kind": "ip", "gold": gold})
    return units


def evaluate(units: list[dict], kind: str) -> tuple[float, float, int]:
    """(precision, recall, gold count): a gold value is found when it is gone from the scrubbed text;
    every replacement beyond the found ones is a false positive."""
    units = [u for u in units if u["kind"] == kind]
    scrubbed, counts = Scrubber(PiiConfig(types=[kind])).scrub(pa.array([u["text"] for u in units]))
    tp = fn = detected = 0
    for unit, out, n in zip(units, scrubbed.to_pylist(), counts[kind].tolist()):
        gold = Counter(unit["gold"])
        found = 0
        for value, k in gold.items():
            left = min(k, len(re.findall(r"(?<![\w.])" + re.escape(value) + r"(?![\w])", out)))
            found += k - left
            fn += left
        tp += found
        detected += n
    fp = max(0, detected - tp)
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1), tp + fn


@pytest.fixture(scope="module")
def units(shared_data):
    return Quiet(labelled_units(shared_data))


@pytest.mark.parametrize("kind", ["email", "ip"])
def test_precision_and_recall_on_real_mail_headers(units, kind):
    precision, recall, gold = evaluate(units, kind)
    print(f"{kind}: precision {precision:.3f} recall {recall:.3f} on {gold} labelled values")
    assert gold >= 150
    assert recall >= 0.98 and precision >= 0.95, (precision, recall)


def test_generated_addresses_go_whole():
    """VERP return paths carry the recipient in the local part after `=`; none of it may stay behind."""
    texts = ["Return-Path: <sentto-2242572-1-jm=jmason.org@returns.groups.yahoo.com>",
             "bounce: list-owner+x$y!z#w&v~u^t@lists.example.org, then prose."]
    out, counts = Scrubber(PiiConfig(types=["email"])).scrub(pa.array(texts))
    assert out.to_pylist() == ["Return-Path: <<EMAIL>>", "bounce: <EMAIL>, then prose."]
    assert counts["email"].tolist() == [1, 1]


def test_private_loopback_and_version_numbers_are_not_ips():
    text = ("relay 127.0.0.1 and 10.1.2.3 and 192.168.0.7 and 172.16.4.4; sendmail 8.11.6/8.11.6; "
            "release v1.2.3.4, version 2.0.0.1, build 10.20.30.40.50; link-local fe80::1 loopback ::1; "
            "at 10:30:45")
    out, counts = Scrubber(PiiConfig(types=["ip"])).scrub(pa.array([text]))
    assert counts["ip"].tolist() == [0] and out[0].as_py() == text
    out, counts = Scrubber(PiiConfig(types=["ip"])).scrub(pa.array(["from 8.8.8.8 and 2001:4860:4860::8888."]))
    assert out[0].as_py() == "from <IP> and <IP>." and counts["ip"].tolist() == [2]
    # Hex letters before "::" end a word, not an address.
    text = ".. versionadded:: 3.12\n.. deprecated:: 3.13\nstd::cout; ends on 4 Jan 2004::\n"
    out, counts = Scrubber(PiiConfig(types=["ip"])).scrub(pa.array([text]))
    assert counts["ip"].tolist() == [0] and out[0].as_py() == text


def test_version_quads_stay_and_addresses_in_an_ip_context_go():
    versions = ["version 1.2.3.4", "v1.2.3.4", "## 1.2.3.4", "## [1.2.3.4] - 2024-01-15", "Release 2.0.1.3",
                "pip install pkg==1.2.3.4", "requests>=2.31.0.1", "1.2.3.4 (2024-01-15)\n------", "* 8.8.4.4:\n  - fix",
                "1.2.3.4\n=======\n\n- Fixed a crash", "Changes in 1.2.3.4", "fixed in 5.6.7.8.", "foo-1.2.3.4.tar.gz",
                "upgrade to 3.1.4.1", "Apache/2.4.41.1 (Unix)", "since 4.4.4.4,", "b_imp_ver=1.0.0.0&n=1",
                "{'app_build': '4.2.16.14'}", "dpkg (1.4.0.20) unstable; urgency=low",
                "binutils (2.10.0.27-0.cvs20000923) unstable; urgency=low", "      Git 1.7.9.2\n",
                "Update draft release notes to 1.7.9.2", "Start preparing for 1.8.3.2", "  2011-06-28 (3.7.7.1)",
                "update V8 to 8.3.110.9",
                "GIT 1.5.4.4",
                "Debian Policy 4.1.2.0.", "1.6.0.4 release notes", "[1.2.3.4]: https://example.com/compare"]
    addresses = ["from 8.8.8.8", "IP 1.2.3.4", "host 93.184.216.34 is up", "8.8.8.8", "1.2.3.4 - - [10/Oct/2000:13:55:36]",
                 "Received: from mx [93.184.216.34]", "http://1.2.3.4/path", "client-ip=64.233.160.1", "ping 9.9.9.9",
                 "Use DNS resolver at 8.8.8.8 in tor-mode", "update DNS to 8.8.8.8", "(HELO mx) (64.233.160.1)",
                 "from ESMTP 64.233.160.1", "DENY 9.9.9.9 port 22", "eth0 8.8.4.4 up", "IPv4 1.0.0.1",
                 # a name before it may name the host at that address: only well-known programs mark a version
                 "by mx (WebEasyMail 3.0.0.2)", "XFree86 4.3.99.16 Bring the tree up",
                 "addresses\n1.1.1.1\n8.8.4.4\n"]
    out, counts = Scrubber(PiiConfig(types=["ip"])).scrub(pa.array(versions + addresses))
    got = counts["ip"].tolist()
    assert [v for v, n in zip(versions, got) if n] == []
    assert [a for a, n in zip(addresses, got[len(versions):]) if n == 0] == []
    assert out.to_pylist()[:len(versions)] == versions
    assert out.to_pylist()[len(versions) + 1] == "IP <IP>" and out.to_pylist()[-1] == "addresses\n<IP>\n<IP>\n"


def test_phone_numbers_international_and_national():
    cfg = PiiConfig(types=["phone"], phone_regions=["US", "DE"])
    texts = ["Call +44 20 7946 0958 today", "Büro: 030 901820 (Berlin)", "US office (212) 555-0123.",
             "Paris +33 1 42 68 53 00", "order #12345, 3.14159, year 2002, zip 02139"]
    out, counts = Scrubber(cfg).scrub(pa.array(texts))
    assert counts["phone"].tolist() == [1, 1, 1, 1, 0]
    assert out.to_pylist()[:4] == ["Call <PHONE> today", "Büro: <PHONE> (Berlin)", "US office <PHONE>.",
                                   "Paris <PHONE>"]


def test_phone_numbers_international_by_default():
    texts = ["Ring 020 7946 0958 (London)", "Tel. 030 901820", "appelez le 01 42 68 53 00", "chiamare 06 6982 1234",
             "cellulare 347 123 4567", "電話 03-1234-5678 まで", "call +91 98765 43210", "ligue (11) 91234-5678",
             "llame al 912 345 678", "tel. +48 22 123 45 67", "bel 06 12345678", "Zürich 044 668 18 00",
             "Sydney 02 9876 5432", "from abroad 0044 20 7946 0958", "+1-613-555-0199 x1234 desk",
             "portable 06.12.34.56.78", "portable 06-12-34-56-78"]
    out, counts = Scrubber(PiiConfig(types=["phone"])).scrub(pa.array(texts))
    assert counts["phone"].tolist() == [1] * len(texts), [t for t, n in zip(texts, counts["phone"].tolist()) if n != 1]
    assert out[0].as_py() == "Ring <PHONE> (London)" and out[14].as_py() == "<PHONE> desk"


def test_dates_versions_and_order_numbers_are_not_phones():
    texts = ["on 24.07.2002 at noon", "dated 2024-01-15 and 15/01/2024", "build 10.0.19041.1", "order #123456789",
             "pi is 3.14159265", "1.234.567 people", "from 10:30 to 11:45", "ISBN 978-3-16-148410-0",
             "years 1998-2003 and 2004 2005 2006", "version 2.10.12 released", "page 12 of 345",
             "id 20020822153000", "lat 48.858844 long 2.294351", "sizes 1024 2048 4096 8192",
             "see 0-18-387650-4 and 1-4737-9596-6", "CEP 03901-975", "code 01012347"]
    out, counts = Scrubber(PiiConfig(types=["phone"])).scrub(pa.array(texts))
    assert counts["phone"].tolist() == [0] * len(texts), [t for t, n in zip(texts, counts["phone"].tolist()) if n]
    assert out.to_pylist() == texts


def test_cards_need_luhn_and_issuer_prefix():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    texts = ["visa 4111 1111 1111 1111", "amex 3782-822463-10005", "bad 4111 1111 1111 1112",
             "not a card 1234567890123456", "tracking 9400111899223100001234", "ref 12 4111 1111 1111 1111"]
    out, counts = Scrubber(PiiConfig(types=["card"])).scrub(pa.array(texts))
    assert counts["card"].tolist() == [1, 1, 0, 0, 0, 1]
    assert out[5].as_py() == "ref 12 <CARD>"  # the run-on number is cut back to the valid card


# (issuer prefix, length) for each network's ranges and lengths in use
CARD_RANGES = [("4", 13), ("4", 16), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15),
               ("37", 15), ("6011", 16), ("6011", 19), ("644", 16), ("649", 16), ("65", 16), ("65", 19),
               ("3528", 16), ("3589", 19), ("300", 14), ("305", 16), ("36", 14), ("38", 14), ("36", 19),
               ("62", 16), ("62", 19), ("5018", 12), ("6759", 13), ("6304", 19), ("2200", 16), ("2204", 19),
               ("60", 16), ("81", 16), ("82", 16), ("508", 16), ("1800", 15), ("2131", 15), ("9792", 16)]


def _luhn_number(prefix: str, length: int, rng) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def test_cards_of_every_network_range_and_length():
    import random

    rng = random.Random(3)
    numbers = [_luhn_number(p, n, rng) for p, n in CARD_RANGES]
    printed = [" ".join(n[i:i + 4] for i in range(0, len(n), 4)) if k % 3 == 1 else
               "-".join(n[i:i + 4] for i in range(0, len(n), 4)) if k % 3 == 2 else n for k, n in enumerate(numbers)]
    out, counts = Scrubber(PiiConfig(types=["card"])).scrub(pa.array([f"card {p} ok" for p in printed]))
    missed = [(p, n) for (p, n), c in zip(CARD_RANGES, counts["card"].tolist()) if c != 1]
    assert not missed, missed
    assert set(out.to_pylist()) == {"card <CARD> ok"}
    # A 13-digit Visa that also passes the GTIN check is a card when printed in groups of four.
    out, counts = Scrubber(PiiConfig(types=["card"])).scrub(pa.array(["visa 4348 7972 2378 0", "EAN 4348797223780"]))
    assert counts["card"].tolist() == [1, 0]


def test_card_look_alikes_are_left_alone():
    import random

    rng = random.Random(4)
    # Luhn-valid numbers outside every issuer range, or of a length the range does not use
    texts = [f"n {_luhn_number(p, n, rng)}" for p, n in [("7", 16), ("99", 16), ("34", 16), ("51", 13), ("4", 15),
                                                         ("1", 16), ("0", 16), ("5018", 11)]]
    # product codes that pass both the GTIN-13 check and Luhn in the Visa range; phone numbers after "+"
    texts += ["EAN 4008943018522", "barcode 4 003963 410196", "phone +5018047890469", "tel +62 21 1813 1102"]
    out, counts = Scrubber(PiiConfig(types=["card"])).scrub(pa.array(texts))
    assert counts["card"].tolist() == [0] * len(texts), [t for t, n in zip(texts, counts["card"].tolist()) if n]


def test_ibans_in_groups_of_four_are_not_cut_up_as_cards():
    texts = ["pay DE86 4116 7460 8394 0305 40 now", "to FR04 6471 7218 1925 4830 2102 587."]
    out, counts = Scrubber(PiiConfig(types=["card", "iban"])).scrub(pa.array(texts))
    assert out.to_pylist() == ["pay <IBAN> now", "to <IBAN>."]
    assert counts["card"].tolist() == [0, 0] and counts["iban"].tolist() == [1, 1]


def test_ibans_need_their_checksum():
    assert iban_ok("GB82WEST12345698765432") and iban_ok("DE89 3704 0044 0532 0130 00")
    assert not iban_ok("GB82WEST12345698765433")
    _, counts = Scrubber(PiiConfig(types=["iban"])).scrub(
        pa.array(["pay to DE89 3704 0044 0532 0130 00 now", "ref GB82WEST12345698765433", "ISBN AB12CDEFGHIJKLMN"]))
    assert counts["iban"].tolist() == [1, 0, 0]


def test_ssn_and_secrets():
    texts = ["ssn 123-45-6789", "not 000-12-3456 nor 666-12-3456 nor 900-12-3456", "call 555-12-34567",
             "aws AKIAIOSFODNN7EXAMPLE", "token ghp_" + "a1B2" * 9,
             "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
             "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"]
    out, counts = Scrubber(PiiConfig(types=["ssn", "secret"])).scrub(pa.array(texts))
    assert counts["ssn"].tolist() == [1, 0, 0, 0, 0, 0, 0]
    assert counts["secret"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert "PRIVATE" not in out[5].as_py() and out[5].as_py() == "<SECRET>"


def test_pseudonyms_are_consistent_and_keyed():
    texts = pa.array(["a@example.com wrote to b@example.org", "cc a@example.com"])
    key = "k" * 32
    out, _ = Scrubber(PiiConfig(types=["email"], replacement="pseudonym", pseudonym_key=key)).scrub(texts)
    first, second = out.to_pylist()
    tok_a = re.findall(r"<EMAIL_[0-9a-f]{8}>", first)
    assert len(set(tok_a)) == 2 and tok_a[0] in second
    other, _ = Scrubber(PiiConfig(types=["email"], replacement="pseudonym", pseudonym_key="other")).scrub(texts)
    assert other[0].as_py() != first


def test_pseudonyms_have_no_built_in_key():
    with pytest.raises(UserError, match="data.pii.pseudonym_key"):
        Scrubber(PiiConfig(types=["email"], replacement="pseudonym"))


def test_pseudonym_key_never_leaves_the_config():
    cfg = build_config({"data": {"pii": {"replacement": "pseudonym", "pseudonym_key": "hunter2-but-longer"}}})
    dumped = json.dumps(cfg.model_dump(mode="json")) + repr(cfg) + str(cfg)
    assert "hunter2" not in dumped
    fingerprint = cfg.model_dump(mode="json")["data"]["pii"]["pseudonym_key"]
    assert re.fullmatch(r"secret:[0-9a-f]{16}", fingerprint)
    assert redact(cfg.model_dump(mode="json"))["data"]["pii"]["pseudonym_key"] == "<redacted>"
    # Another key, another fingerprint: identities (config hashes) follow the key.
    assert build_config({"data": {"pii": {"pseudonym_key": "another-key-entirely"}}}).model_dump(
        mode="json")["data"]["pii"]["pseudonym_key"] != fingerprint
    # A config read back from its JSON form (a Prefect run's stored parameters) has no key, not the mask.
    assert build_config(cfg.model_dump(mode="json")).data.pii.pseudonym_key is None


def test_work_dir_key_is_generated_once_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv(PSEUDONYM_KEY_ENV, raising=False)
    cfg = build_config({"data": {"pii": {"replacement": "pseudonym"}}})
    first = with_pseudonym_key(cfg, str(tmp_path))
    key_file = tmp_path / "_secrets" / "pseudonym_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    again = with_pseudonym_key(cfg, str(tmp_path))
    assert first.data.pii.pseudonym_key.get_secret_value() == again.data.pii.pseudonym_key.get_secret_value()
    assert len(first.data.pii.pseudonym_key.get_secret_value()) == 64
    # The environment wins over the generated key; placeholders need no key at all.
    monkeypatch.setenv(PSEUDONYM_KEY_ENV, "from-the-environment-0123")
    env = with_pseudonym_key(cfg, str(tmp_path))
    assert env.data.pii.pseudonym_key.get_secret_value() == "from-the-environment-0123"
    assert with_pseudonym_key(build_config({}), str(tmp_path / "other")).data.pii.pseudonym_key is None
    assert not (tmp_path / "other").exists()
    key_file.chmod(0o644)
    monkeypatch.delenv(PSEUDONYM_KEY_ENV)
    with pytest.raises(UserError, match="readable by other users"):
        with_pseudonym_key(cfg, str(tmp_path))


def test_step_keeps_every_row_and_no_original_survives(shared_data):
    rows = [json.loads(line) for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    docs = pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows],
                     "source": ["mail"] * len(rows)})
    out = PiiStep(PiiConfig()).apply(docs)
    assert out.kept.num_rows == len(rows) and out.dropped.num_rows == 0
    assert sum(out.kept.column("pii_email").to_pylist()) > 500
    body = "\n".join(out.kept.column("text").to_pylist())
    gold = {v for u in labelled_units(shared_data) for v in u["gold"]}
    tokens = {t.rstrip(".") for t in re.split(r"[\s<>\"'(),;:\[\]=]+", body)}  # one pass, not one per value
    left = sum(1 for v in gold if v in tokens)
    assert len(gold) > 300 and left <= len(gold) // 100, (left, len(gold))  # counts only, never a value
    assert "127.0.0.1" in body  # loopback is not personal


def test_bad_input_does_not_crash():
    texts = ["", "\x00\x01\xff" * 10, "שלום user@example.co.il שלום", "电话+86 10 6552 9988联系", "x" * 10_000_000]
    out, counts = Scrubber(PiiConfig()).scrub(pa.array(texts))
    assert out[2].as_py() == "שלום <EMAIL> שלום"
    assert counts["phone"].tolist()[3] == 1 and len(out[4].as_py()) == 10_000_000


def test_ip_search_in_windows_finds_what_a_whole_text_search_finds(shared_data) -> None:
    """The scrubber searches only the stretches `ip_windows` picks; on real mail and pages, and on
    random strings of address characters, Unicode digits and separators, the matches are the same."""
    import random

    from llm.data.pii import DETECTORS, _sub_in
    from llm.data.pii_windows import ip_windows

    texts = [json.loads(line)["text"] for line in (shared_data / "mail_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    texts += [json.loads(line).get("rst_source") or "" for line in (shared_data / "html_dev.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(1)
    alphabet = list("0123456789abcdefABCDEF.:% \n-_/,;()[]") + ["é", "\u0663", "中", "\u00a0", "version ", "v", "::",
                                                               "1.2.3.4", "8.8.8.8", "fe80::1%eth0", "2001:db8::1"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(20000)]
    pattern = DETECTORS["ip"].compiled
    found = 0
    windows = ip_windows(pa.array(texts))
    for d, text in enumerate(texts):
        whole = [(m.start(), m.end()) for m in pattern.finditer(text)]
        found += len(whole)
        assert _sub_in(pattern, lambda m: f"<{m.start()}:{m.end()}>", text, windows.get(d, [])) == pattern.sub(
            lambda m: f"<{m.start()}:{m.end()}>", text)
    assert found > 5000  # the comparison saw plenty of matches
