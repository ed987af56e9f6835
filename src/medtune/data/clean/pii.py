"""De-identification of Chinese and English medical text: personal data becomes a typed placeholder.

>>> text, counts = deidentify("患者张伟，男，45岁，电话13812345678，住院号：ZY20230011")
>>> text
'患者[NAME]，男，45岁，电话[PHONE]，住院号：[MRN]'
>>> sorted(counts.items())
[('MRN', 1), ('NAME', 1), ('PHONE', 1)]

Detectors run in a fixed order, each over the output of the one before: emails, then values
named by a marker (medical record and insurance numbers, so a marked number is not read as a phone
or an ID), resident IDs (checksum-verified, before phones so an 18-digit ID is not a phone),
phones, addresses, and names last. Names are replaced only where a marker says a name follows
(``姓名：``, ``患者``, ``X医生``, ``Dr.``, ``Patient name:``); markers and titles are kept.
Placeholders contain no digits, ``@`` or capitalised words, so running twice changes nothing.

Each detector has a cheap gate (a substring test or a tiny regex) so the common record, which has
no long digit run, no ``@`` and no marker, costs a few C-level scans.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PII_TYPES", "deidentify", "deidentify_record", "placeholder", "valid_cn_id"]

PII_TYPES = ("PHONE", "ID", "EMAIL", "ADDRESS", "MRN", "INSURANCE", "NAME")

# The ~120 most common Chinese surnames (Ministry of Public Security ranking) plus the common
# two-character ones; a name after 患者 or before 医生 must start with one of these.
COMPOUND_SURNAMES = (
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "令狐", "司徒", "夏侯",
    "长孙", "宇文", "轩辕", "南宫", "端木",
)
SINGLE_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩邓冯曹彭曾肖田董潘袁蔡蒋余于杜叶程魏苏"
    "吕丁任卢姚沈钟姜崔谭陆范汪廖石金韦贾夏付方邹熊白孟秦邱侯江尹薛闫段雷龙黎史陶贺毛郝顾龚邵万覃"
    "武钱戴严欧莫孔向常汤康易乔赖文施洪牛樊葛邢齐伍庞颜倪庄聂章鲁岳翟殷詹"
)

# Characters that end or break a Chinese given name in medical text: function words, kinship and
# title words, and the second characters of medical words that start with a surname character
# (高热, 黄疸, 白细胞, 常规, 于是, 周身, 方面 ...). A "name" containing one is not replaced.
_NOT_GIVEN_NAME = (
    "某氏先生女士男性者们的了是在和与及或也都就还又很要会能可说让请给对把被从向为个位些这那其该此"
    "每各本您你我他她它吗呢吧啊呀哦嗯好谢问答诊治疗医护师夫主任值班科院室床号岁年月日天周次"
    "热烧血压疸病症炎痛肿咳嗽喘吐泻药片针剂量度面法身糖脂体细胞带癜斑膏草属上下中外内前后左右"
    "时期常规见级资庭湖队团组部门处有无不没已再多少老重轻急慢半今昨晨晚早夜午凌当"
    "何按照据找看听遵从靠需酸龄素钙钾钠铁锌碘蛋尿便汗痰液瘤癌结节复发感"
    "于因伴患服季末子人州省市县区镇村"
)
# Words that start with a surname character and follow 患者 or precede 医生 in ordinary text.
_SURNAME_WORDS = ("康复", "高热", "高烧", "高龄", "高危", "易发", "易感", "严重", "严格", "常规",
                  "常见", "于是", "任何", "尤其", "包括", "包块", "方面", "马上", "连续", "陆续",
                  "万一", "向来", "安静", "文化", "齐全", "余下", "曾经", "毛发", "黄疸", "叶酸",
                  "韩国", "江苏", "江西", "常务", "丁香")
# Characters that are never part of a Chinese place name, so 我住在北京市 yields 北京市 (和 is
# allowed: 和平区 and 和平路 are everywhere).
_NOT_ADDRESS = "在住于到是的我你他她家址从去来自为与及或请问了也就都要想前往现居目"


def _cjk_except(chars: str) -> str:
    """Return a regex character class of CJK ideographs (U+4E00..U+9FFF) minus ``chars``."""
    ranges, start = [], 0x4E00
    for code in sorted({ord(c) for c in chars}):
        if code > start:
            ranges.append(f"{chr(start)}-{chr(code - 1)}")
        start = code + 1
    ranges.append(f"{chr(start)}-\u9fff")
    return "[" + "".join(ranges) + "]"


def placeholder(pii_type: str) -> str:
    """Return the placeholder for a PII type, e.g. ``[PHONE]``."""
    return f"[{pii_type}]"


# --- Chinese resident ID ------------------------------------------------------------------------

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def _plausible_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def valid_cn_id(number: str) -> bool:
    """Return whether ``number`` is a well-formed Chinese resident ID.

    18 characters: 17 digits and a digit or X, ISO 7064 MOD 11-2 check character, birth date
    YYYYMMDD at positions 7-14 within 1900..2099. 15 digits (pre-1999 IDs): birth date YYMMDD at
    positions 7-12 (19YY), no check character.
    """
    if not number.isascii():  # str.isdigit() accepts "１" and "²", which int() may reject
        return False
    if len(number) == 18 and number[:17].isdigit() and number[17] in "0123456789Xx":
        year, month, day = int(number[6:10]), int(number[10:12]), int(number[12:14])
        if not 1900 <= year <= 2099 or not _plausible_date(year, month, day):
            return False
        total = sum(int(d) * w for d, w in zip(number[:17], _ID_WEIGHTS))
        return _ID_CHECK[total % 11] == number[17].upper()
    if len(number) == 15 and number.isdigit():
        return _plausible_date(1900 + int(number[6:8]), int(number[8:10]), int(number[10:12]))
    return False


# --- patterns -----------------------------------------------------------------------------------
# Every pattern captures the personal value as group "v"; the rest of the match (a marker, a
# title) is kept. Digit patterns refuse to start or end inside a longer number, word or decimal.


def _regex(pattern: str, flags: int = 0) -> re.Pattern:
    """Return the compiled pattern with ASCII \\d \\w \\b (so 请联系Dr. Smith has a boundary)."""
    return re.compile(pattern, flags | re.ASCII)


_NO_NUM_BEFORE = r"(?<![0-9A-Za-z.+\-])"
_NO_NUM_AFTER = r"(?![0-9A-Za-z%]|\.\d)"

_EMAIL = _regex(
    r"(?<![A-Za-z0-9._%+-])(?P<v>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
)

_MARKED_VALUE = (r"[ \t]*(?:[：:#＃]|是|为|(?i:is|was))?[ \t]*[#＃]?[ \t]*"
                 r"(?P<v>(?=[A-Za-z-]*\d)[A-Za-z0-9][A-Za-z0-9-]{3,29})(?![A-Za-z0-9])")
_MRN = _regex(
    r"(?:(?:病历|住院|门诊|病案|就诊卡)号码?|\bMRN\b|(?i:\bmedical\s+record\s+(?:no\b\.?|number"
    r"|num\b\.?|#)))" + _MARKED_VALUE
)
_INSURANCE = _regex(
    r"(?:(?:医保卡|社保卡)(?:号码?)?|(?:医保|社保|保险单|保单|保险)号码?|"
    r"(?i:\binsurance\s+(?:card\s+)?(?:id\b|number|no\b\.?|#)|\bpolicy\s+(?:number|no\b\.?|#)"
    r"|\bmember\s+id\b))" + _MARKED_VALUE
)

_CN_ID = _regex(r"(?<![0-9A-Za-z])(?P<v>\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])")

_CN_MOBILE = r"(?:(?:\+|00)?86[ \-]?)?1[3-9]\d(?:[ \-]?\d{4}){2}"
_CN_LANDLINE = r"(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3}[ \-])[ ]?[2-9]\d{6,7}"
_US_PHONE = (r"(?:\+1[ .\-]?)?\(\d{3}\)[ ]?\d{3}[ .\-]\d{4}"
             r"|\+1[ .\-]?\d{3}[ .\-]\d{3}[ .\-]\d{4}"
             r"|(?:1-)?\d{3}-\d{3}-\d{4}|\d{3}\.\d{3}\.\d{4}")
_INTL_PHONE = r"\+[1-9]\d{0,2}(?:[ \-]\(?\d{1,6}\)?){1,5}"
_PHONE = _regex(
    rf"{_NO_NUM_BEFORE}(?P<v>{_CN_MOBILE}|{_CN_LANDLINE}|{_US_PHONE}|{_INTL_PHONE})"
    + _NO_NUM_AFTER
)
# Every ID or phone has 7 digits in a row, or a 3-digit group, a separator and a 4-digit group
# (international numbers with shorter groups only when they have 7 digits in a row); the one
# shared leading [0-9] lets the regex engine skip ahead to digits quickly.
_DIGIT_GATE = _regex(r"[0-9](?:[0-9]{6}|[0-9]{2}[ .\-]\(?[0-9]{4}|\)[ ]?[0-9]{3})")

_ADDR_CHAR = _cjk_except(_NOT_ADDRESS)
_PROVINCES = (
    "北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北"
    "|湖南|广东|海南|四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门"
)
_ADMIN = rf"{_ADDR_CHAR}{{2,6}}?(?:省|自治区|自治州|市|地区|盟|区|县|旗|镇|乡)"
_TOP_ADMIN = rf"(?:(?:{_PROVINCES})(?:省|市|自治区)?|{_ADDR_CHAR}{{2,4}}?市)"
# Road names: place-name characters or capitals (XX路 in templates); 农村 / 乡村 / 山村 are words.
_ROAD = rf"[{_ADDR_CHAR[1:-1]}A-Z]{{1,8}}?(?:大道|大街|路|街|巷|胡同|弄|(?<![农乡山])村)"
_HOUSE = r"[0-9A-Z]+(?:-[0-9A-Z]+)?号"
_UNITS = r"(?:[0-9A-Z]+(?:-[0-9A-Z]+)?(?:号楼|栋|幢|座|楼|单元|层|室))*"
# Either two administrative levels and a road (house number optional), or a road and a number.
_CN_ADDRESS = _regex(
    rf"(?P<v>{_TOP_ADMIN}(?:{_ADMIN}){{1,3}}{_ROAD}(?:{_HOUSE}{_UNITS})?"
    rf"|(?:{_ADMIN}){{0,4}}{_ROAD}{_HOUSE}{_UNITS})"
)
_STREET_SUFFIX = (r"Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Place"
                  r"|Pl|Way|Terrace|Parkway|Pkwy|Highway|Hwy|Circle|Cir")
_EN_ADDRESS = _regex(
    rf"(?<![\w\-.])(?P<v>\d{{1,6}}[A-Za-z]?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"
    rf"(?:[A-Z][a-z]+|\d+(?:st|nd|rd|th))(?:\s+[A-Z][a-z]+){{0,3}}\s+(?:{_STREET_SUFFIX})\b\.?"
    r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Room|Rm|#)\.?\s*#?\s*[A-Za-z0-9\-]+)?)"
)
_EN_ADDRESS_GATE = _regex(r"[0-9][A-Za-z]?\s+[A-Z]")

_SURNAME = f"(?:{'|'.join(COMPOUND_SURNAMES)}|[{SINGLE_SURNAMES}])"
_GIVEN = _cjk_except(_NOT_GIVEN_NAME)
_CN_NAME = f"(?!{'|'.join(_SURNAME_WORDS)}){_SURNAME}{_GIVEN}{{1,2}}"
_NAME_FIELD_END = (
    r"(?=[^\u4e00-\u9fff]|$|性别|年龄|男|女|电话|手机|住址|地址|身份证|科室|床号|病历|住院)"
)
# Transliterated foreign names join parts with a middle dot: 米歇尔·奥巴马.
_CN_NAME_FIELD = _regex(
    rf"姓名[ \t]*[：:][ \t]*(?P<v>{_GIVEN}{{2,4}}(?:[·•・]{_GIVEN}{{1,6}})*){_NAME_FIELD_END}"
)
_CN_PATIENT = _regex(
    rf"(?:患者|病人|病患)(?:[ \t]*[：:])?[ \t]*(?P<v>{_CN_NAME})"
    r"(?=[，,、。；; \t（(]|先生|女士|同学|[男女][，,\d])"
)
# A doctor's name starts a word: after punctuation, the text start, or a particle
# (请张伟医生, 找李娜大夫, 谢谢王芳护士) -- so 严格按医生 and 健康检查医生 stay.
_DOCTOR_NAME_START = (
    r"(?:(?<![\u4e00-\u9fff])|(?<=[的是找请问给和与同向跟对由被让叫经及或位见看挂约了过称])"
    r"|(?<=谢谢)|(?<=感谢))"
)
_CN_DOCTOR = _regex(rf"{_DOCTOR_NAME_START}(?P<v>{_CN_NAME})(?=医生|大夫|主任|护士)")

_NAME_WORD = r"[A-Z](?:'[A-Z])?[a-z]+(?:-?[A-Z][a-z]+)?"
_EN_NAME = rf"{_NAME_WORD}(?:[ ]+(?:[A-Z]\.[ ]+)?{_NAME_WORD}){{0,2}}"
# "Miss" is also a verb: in Title Case text ("Will We Miss Cancers") it is not a title.
_EN_TITLED = _regex(
    rf"\b(?:Dr|Mr|Mrs|Ms|Prof|(?<![A-Z][a-z] )(?<![A-Z][a-z][a-z] )(?<![A-Z][a-z]{{3}} )Miss)"
    rf"\b\.?[ ]+(?P<v>{_EN_NAME})"
)
_EN_NAME_FIELD = _regex(
    rf"(?:\b[Pp]atient(?:'s)?[ ]+[Nn]ame|(?<![A-Za-z] )(?<![A-Za-z])Name)[ \t]*[:：][ \t]*"
    rf"(?P<v>{_EN_NAME})"
)
# ChatDoctor uses "Patient:" as a speaker label before ordinary sentences, so a name is read only
# when something that introduces a person's details follows it.
_EN_PATIENT = _regex(
    rf"\bPatient[ \t]*:[ \t]*(?P<v>{_EN_NAME})(?=[ ]*[,(]|[ ]+aged?\b|[ ]*\d)"
)
# After "Patient: Word," a one-word name needs details to follow (", 45", ", male", ", aged").
_PERSON_DETAILS = _regex(
    r"[ ]*(?:\(|aged?\b|\d|,[ ]*(?:\d|aged?\b|male\b|female\b|[MF]\b))", re.IGNORECASE
)
# Capitalised words that open sentences or address people and are never names.
_NOT_EN_NAME = frozenset(
    (
        "I", "Hi", "Hello", "Hey", "Dear", "Doctor", "Doc", "Sir", "Madam", "Okay", "Ok", "Yes",
        "No", "Yeah", "Nope", "Well", "So", "Oh", "Ah", "Um", "Uh", "Hmm", "Thanks", "Thank",
        "You", "Please", "Sorry", "Sure", "Alright", "Right", "Fine", "Good", "Great", "Morning",
        "Afternoon", "Evening", "Night", "Actually", "Also", "And", "But", "Or", "Then", "Now",
        "Really", "Wow", "Anyway", "Honestly", "Basically", "Yesterday", "Today", "Tomorrow",
        "Recently", "Lately", "Since", "After", "Before", "When", "What", "Why", "How", "Where",
        "Who", "Which", "Is", "Are", "Do", "Does", "Did", "Can", "Could", "Would", "Should",
        "Will", "My", "Your", "His", "Her", "Our", "Their", "The", "A", "An", "This", "That",
        "These", "Those", "It", "We", "They", "He", "She", "Me", "Not", "Just", "Maybe",
        "Perhaps", "Hopefully", "Unfortunately", "Of", "Course", "Male", "Female", "Man", "Woman",
        "Boy", "Girl", "Mother", "Father", "Mom", "Dad", "Son", "Daughter", "Wife", "Husband",
        "Baby", "Child", "Patient", "Name", "Age", "Sex", "Gender", "None", "Unknown", "Anonymous",
    )
)


# --- detectors ----------------------------------------------------------------------------------


def _always(_: object) -> bool:
    return True


def _markers(*plain: str, folded: tuple[str, ...] = ()) -> Callable[[str], bool]:
    """Return a gate: does the text contain one of ``plain``, or (ignoring case) of ``folded``?"""

    def gate(text: str) -> bool:
        for marker in plain:  # a plain loop: a generator costs more than the searches here
            if marker in text:
                return True
        if folded:
            lowered = text.lower()
            for marker in folded:
                if marker in lowered:
                    return True
        return False

    return gate


@dataclass(frozen=True)
class _Detector:
    """One pattern of one PII type: where it may fire (gate), what it matches, what it accepts."""

    pii_type: str
    pattern: re.Pattern
    gate: Callable[[str], object] = _always
    accept: Callable[[re.Match], bool] = _always
    cjk_only: bool = False  # skipped on pure-ASCII text

    def apply(self, text: str, counts: Counter) -> str:
        """Return ``text`` with accepted values replaced; add the number replaced to ``counts``."""
        if not self.gate(text):
            return text
        hits = 0

        def replace(match: re.Match) -> str:
            nonlocal hits
            if not self.accept(match):
                return match.group(0)
            hits += 1
            whole, offset = match.group(0), match.start()
            start, end = match.start("v") - offset, match.end("v") - offset
            return whole[:start] + placeholder(self.pii_type) + whole[end:]

        text = self.pattern.sub(replace, text)
        if hits:
            counts[self.pii_type] += hits
        return text


def _valid_id_match(match: re.Match) -> bool:
    return valid_cn_id(match.group("v"))


def _phone_digits_ok(match: re.Match) -> bool:
    """Whether a phone candidate has a phone's number of digits (8..15, E.164 at most 15)."""
    return 8 <= sum(c.isdigit() for c in match.group("v")) <= 15


def _en_name_ok(match: re.Match) -> bool:
    """Whether no word of a capitalised English name candidate is a known non-name."""
    return not any(word in _NOT_EN_NAME for word in match.group("v").split())


def _en_patient_ok(match: re.Match) -> bool:
    """Like :func:`_en_name_ok`; a single word must be followed by a person's details, since
    "Patient: Hemarthrosis, is it serious?" is a speaker label before a sentence."""
    if not _en_name_ok(match):
        return False
    if " " in match.group("v"):
        return True
    return _PERSON_DETAILS.match(match.string, match.end()) is not None


DETECTORS = (
    _Detector("EMAIL", _EMAIL, _markers("@")),
    _Detector("MRN", _MRN, _markers("病历号", "住院号", "门诊号", "病案号", "就诊卡号", "MRN",
                                    folded=("medical record",))),
    _Detector("INSURANCE", _INSURANCE, _markers("医保", "社保", "保险", "保单",
                                                folded=("insurance", "policy", "member id"))),
    _Detector("ID", _CN_ID, _DIGIT_GATE.search, _valid_id_match),
    _Detector("PHONE", _PHONE, _DIGIT_GATE.search, _phone_digits_ok),
    _Detector("ADDRESS", _CN_ADDRESS, _markers("路", "街", "巷", "村", "弄", "大道", "胡同"),
              cjk_only=True),
    _Detector("ADDRESS", _EN_ADDRESS, _EN_ADDRESS_GATE.search),
    _Detector("NAME", _CN_NAME_FIELD, _markers("姓名"), cjk_only=True),
    _Detector("NAME", _CN_PATIENT, _markers("患者", "病人", "病患"), cjk_only=True),
    _Detector("NAME", _CN_DOCTOR, _markers("医生", "大夫", "主任", "护士"), cjk_only=True),
    _Detector("NAME", _EN_TITLED, _markers("Dr", "Mr", "Ms", "Miss", "Prof"), _en_name_ok),
    _Detector("NAME", _EN_NAME_FIELD, _markers("Name", "name"), _en_name_ok),
    _Detector("NAME", _EN_PATIENT, _markers("Patient"), _en_patient_ok),
)


def deidentify(text: str) -> tuple[str, Counter]:
    """Return ``text`` with personal data replaced by ``[TYPE]`` placeholders, and the number of
    replacements per type (types with none are absent)."""
    counts: Counter = Counter()
    is_ascii = text.isascii()  # placeholders are ASCII, so this holds after replacements too
    for detector in DETECTORS:
        if not (detector.cjk_only and is_ascii):
            text = detector.apply(text, counts)
    return text, counts


# --- records ------------------------------------------------------------------------------------

_MESSAGE_KEYS = ("messages", "prompt", "chosen", "rejected", "completion")
_STRING_KEYS = ("text", "question", "context")


def _clean_messages(messages, counts: Counter):
    """Return a copy of a message list (or a plain string prompt) with contents de-identified."""
    if isinstance(messages, str):
        return _clean_string(messages, counts)
    cleaned = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            message = {**message, "content": _clean_string(content, counts)}
        cleaned.append(message)
    return cleaned


def _clean_string(text: str, counts: Counter) -> str:
    text, found = deidentify(text)
    counts.update(found)
    return text


def deidentify_record(rec: dict) -> tuple[dict, Counter]:
    """Return a de-identified copy of a unified record (any shape) and the counts per type.

    Covers message contents (messages, prompt, chosen, rejected, completion), text, question,
    context and option values; other keys are carried over untouched and ``rec`` is not mutated.
    """
    counts: Counter = Counter()
    out = dict(rec)
    for key in _MESSAGE_KEYS:
        if isinstance(rec.get(key), (list, str)):
            out[key] = _clean_messages(rec[key], counts)
    for key in _STRING_KEYS:
        if isinstance(rec.get(key), str):
            out[key] = _clean_string(rec[key], counts)
    if isinstance(rec.get("options"), dict):
        out["options"] = {k: _clean_string(v, counts) if isinstance(v, str) else v
                          for k, v in rec["options"].items()}
    return out, counts
