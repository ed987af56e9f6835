"""Tests for medtune.data.clean.pii: each PII type in Chinese and English, the text it must leave alone,
the resident-ID checksum, counts, idempotence, record shapes, and false positives on real data."""

import copy
import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from medtune.data.clean.pii import PII_TYPES, deidentify, deidentify_record, valid_cn_id

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

# GB 11643-1999 (ISO 7064 MOD 11-2): weights of the first 17 digits, check char by sum mod 11.
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"


def make_id(first17: str) -> str:
    """A resident ID with the check character computed from the published algorithm."""
    assert len(first17) == 17 and first17.isdigit()
    return first17 + ID_CHECK[sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS)) % 11]


def wrong_check(number: str) -> list[str]:
    """The same ID with each of the ten wrong check characters."""
    return [number[:17] + c for c in ID_CHECK if c != number[17]]


# --- resident ID checksum ---------------------------------------------------------------------


def test_pii_types_and_standard_example_id():
    assert PII_TYPES == ("PHONE", "ID", "EMAIL", "ADDRESS", "MRN", "INSURANCE", "NAME")
    # The worked example of GB 11643-1999.
    assert make_id("11010519491231002") == "11010519491231002X"
    assert valid_cn_id("11010519491231002X")
    assert valid_cn_id("11010519491231002x")


@pytest.mark.parametrize("first17", ["11010119900307123", "44030519851111001", "13010220000229456",
                                     "31011520991231000", "65010219000101777"])
def test_valid_ids_pass_and_every_wrong_check_char_fails(first17):
    number = make_id(first17)
    assert valid_cn_id(number)
    assert not any(valid_cn_id(bad) for bad in wrong_check(number))


@pytest.mark.parametrize("first17", [
    "44052418800101001",  # 1880: before 1900
    "11010121000101001",  # 2100: after 2099
    "11010119900230001",  # 30 February
    "11010119900229001",  # 29 February of a non-leap year
    "11010119901301001",  # month 13
    "11010119900100001",  # day 0
])
def test_implausible_birth_dates_fail_even_with_a_correct_check_char(first17):
    assert not valid_cn_id(make_id(first17))


def test_old_15_digit_ids_and_malformed_input():
    assert valid_cn_id("110105491231002")  # born 1949-12-31
    assert valid_cn_id("440301800229123")  # 1980-02-29, a leap day
    assert not valid_cn_id("110105491331002")  # month 13
    assert not valid_cn_id("440301810229123")  # 1981 was not a leap year
    malformed = ["", "1101054912310021", "11010519491231002", "1101051949123100XX",
                 "11010A19491231002X", "1101051949123100X2", "11010519491231002Y",
                 "１１０１０５４９１２３１００２"]  # full-width digits
    for bad in malformed:
        assert not valid_cn_id(bad), bad


# --- detection, type by type -------------------------------------------------------------------

VALID_ID = make_id("11010119900307123")
MOBILE_LIKE_ID = make_id("13800119900307123")  # starts like a mobile number

POSITIVES = {
    "PHONE": [
        ("电话13812345678，随时联系", "电话[PHONE]，随时联系"),
        ("手机：138 1234 5678。", "手机：[PHONE]。"),
        ("手机138-1234-5678", "手机[PHONE]"),
        ("请拨+86 139-1234-5678咨询", "请拨[PHONE]咨询"),
        ("号码8615912345678", "号码[PHONE]"),
        ("座机010-62345678或0755 2345678", "座机[PHONE]或[PHONE]"),
        ("科室电话(010)62345678", "科室电话[PHONE]"),
        ("科室电话（021）52345678", "科室电话[PHONE]"),
        ("Call (555) 123-4567 today.", "Call [PHONE] today."),
        ("Phone 555-123-4567, fax 555.123.4568", "Phone [PHONE], fax [PHONE]"),
        ("Reach me at +1 555 123 4567.", "Reach me at [PHONE]."),
        ("London office +44 20 7946 0958", "London office [PHONE]"),
    ],
    "ID": [
        (f"身份证号：{VALID_ID}，", "身份证号：[ID]，"),
        (f"ID {VALID_ID.lower()} on file", "ID [ID] on file"),
        (f"证件{MOBILE_LIKE_ID}", "证件[ID]"),
        ("老身份证110105491231002已换", "老身份证[ID]已换"),
    ],
    "EMAIL": [
        ("邮箱zhang.san@example.com。", "邮箱[EMAIL]。"),
        ("write to john_doe+clinic@mail.hospital.co.uk now", "write to [EMAIL] now"),
        ("(a.b-c@x-y.org)", "([EMAIL])"),
    ],
    "ADDRESS": [
        ("我家住在北京市朝阳区建国路88号，离医院近", "我家住在[ADDRESS]，离医院近"),
        ("广东省深圳市南山区科技园南区科苑路15号3栋1201室", "[ADDRESS]"),
        ("地址：上海市浦东新区世纪大道100号", "地址：[ADDRESS]"),
        ("去天津市和平区和平路看病", "去[ADDRESS]看病"),
        ("住在和平路26号附近", "住在[ADDRESS]附近"),
        ("患者家住浙江省杭州市西湖区文三路", "患者家住[ADDRESS]"),
        ("He lives at 123 Main Street, Apt 4B.", "He lives at [ADDRESS]."),
        ("Send it to 1600 Pennsylvania Avenue", "Send it to [ADDRESS]"),
        ("Office: 42 West Elm St. Suite 300", "Office: [ADDRESS]"),
        ("at 7 Oak Blvd", "at [ADDRESS]"),
    ],
    "MRN": [
        ("病历号：A1234567", "病历号：[MRN]"),
        ("住院号 20230011，床号12", "住院号 [MRN]，床号12"),
        ("门诊号#889900", "门诊号#[MRN]"),
        ("病案号为BA-2023-0042。", "病案号为[MRN]。"),
        ("就诊卡号:9001234567", "就诊卡号:[MRN]"),
        ("MRN: 00123456", "MRN: [MRN]"),
        ("Medical Record No. 778899", "Medical Record No. [MRN]"),
        ("his medical record number is 12345-67.", "his medical record number is [MRN]."),
        ("患者MRN：Z998877", "患者MRN：[MRN]"),
    ],
    "INSURANCE": [
        ("医保卡号：1101234567", "医保卡号：[INSURANCE]"),
        ("社保号 SB20230001", "社保号 [INSURANCE]"),
        (f"社保卡号：{VALID_ID}", "社保卡号：[INSURANCE]"),
        ("保险单号: PA2023-0001", "保险单号: [INSURANCE]"),
        ("insurance ID: XYZ123456789", "insurance ID: [INSURANCE]"),
        ("Insurance number 88776655", "Insurance number [INSURANCE]"),
        ("Policy number #AB-12345", "Policy number #[INSURANCE]"),
        ("member ID W123456789", "member ID [INSURANCE]"),
    ],
    "NAME": [
        ("姓名：张三", "姓名：[NAME]"),
        ("姓名:李四，性别：男", "姓名:[NAME]，性别：男"),
        ("姓名：欧阳娜娜性别：女", "姓名：[NAME]性别：女"),
        ("姓名：米歇尔·奥巴马", "姓名：[NAME]"),
        ("患者张伟，男，45岁", "患者[NAME]，男，45岁"),
        ("患者欧阳明，女，32岁", "患者[NAME]，女，32岁"),
        ("病人李娜（女，30岁）", "病人[NAME]（女，30岁）"),
        ("患者：王芳，因头痛入院", "患者：[NAME]，因头痛入院"),
        ("病患陈静女士", "病患[NAME]女士"),
        ("请张伟医生会诊", "请[NAME]医生会诊"),
        ("张伟医生认为是感冒", "[NAME]医生认为是感冒"),
        ("谢谢李娜大夫", "谢谢[NAME]大夫"),
        ("今早，王建国主任查房", "今早，[NAME]主任查房"),
        ("由刘洋护士换药", "由[NAME]护士换药"),
        ("司马光医生", "[NAME]医生"),
        ("I saw Dr. Smith yesterday.", "I saw Dr. [NAME] yesterday."),
        ("Dr John Watson said so", "Dr [NAME] said so"),
        ("Mrs. O'Brien and Mr. McDonald", "Mrs. [NAME] and Mr. [NAME]"),
        ("Ms. Mary-Jane Parker", "Ms. [NAME]"),
        ("Hello, Miss Lee.", "Hello, Miss [NAME]."),
        ("Patient name: John Smith", "Patient name: [NAME]"),
        ("Name: Alice Brown\nAge: 40", "Name: [NAME]\nAge: 40"),
        ("Patient: John Smith, 45, male", "Patient: [NAME], 45, male"),
        ("Patient: Jane (F, 30)", "Patient: [NAME] (F, 30)"),
        ("Patient: Mary Jones aged 60", "Patient: [NAME] aged 60"),
        ("请联系Dr. Wang", "请联系Dr. [NAME]"),
    ],
}
ALL_POSITIVES = [(t, text, want) for t, cases in POSITIVES.items() for text, want in cases]


POSITIVE_IDS = [f"{t}-{i}" for i, (t, _, _) in enumerate(ALL_POSITIVES)]


@pytest.mark.parametrize("pii_type,text,want", ALL_POSITIVES, ids=POSITIVE_IDS)
def test_positive_is_replaced_and_counted_under_its_type(pii_type, text, want):
    got, counts = deidentify(text)
    assert got == want
    assert set(counts) == {pii_type}
    assert counts[pii_type] == want.count(f"[{pii_type}]")


NEGATIVES = [
    # numbers that are not phones or IDs
    "血压120/80mmHg，心率76次/分", "2023-05-01复查", "WBC 5.0×109／L，PLT 250×10^9/L",
    "每日3次，每次10mg", "输液1500毫升", "乙肝DNA定量20807000", "HBV-DNA 1.38E+07 IU/ml",
    "Hb 13.5-15.5 g/dL", "π≈3.14159265358", "订单号13812345678901", "PMID 12345678",
    "110101199003071234567",  # 21 digits: no ID inside a longer number
    # emails
    "@张医生 你好", "user@localhost", "血糖@空腹",
    # addresses
    "心前区疼痛", "消化道出血", "阻断神经通路", "在农村生活多年", "新疆某农村", "四川农村的儿童",
    "3号染色体异常", "take 2 Tablets Daily", "grade 3 Stage Two",
    # markers without a value
    "病历号码请妥善保管", "MRN results pending", "居民医保报销60%", "insurance covers 80% of costs",
    "my insurance number is unknown", "mRNA 疫苗",
    # names: ordinary medical Chinese
    "患者出现发热咳嗽三天", "患者男，45岁", "主治医生", "家庭医生", "值班医生", "这位医生",
    "您好医生，我想问", "患者康复，出院", "患者高热，体温39℃", "患者王某，男，50岁", "患者张某某，",
    "严格按医生的要求", "健康检查医生说我有脂肪肝", "根据患者叶酸、维生素B12的水平", "任何医生都",
    "谢谢解惑医生", "50岁以上患者易发，", "病人张先生", "高年资医生", "以前曾看过医生",
    "患者夏季，", "患者周末，", "患者常伴，", "患者韩国人，", "患者于当地医院，", "问丁香医生",
    "，常务副主任", "患者曾于2020年手术", "，高级护士", "，康复医生",
    # names: ordinary English and speaker labels
    "Patient: Hi doctor, I have a cough.", "Patient: Hello, I am 25.", "Patient: I have fever",
    "Patient: Okay, doctor. Thank you.", "Patient: Hemarthrosis, is it serious?",
    "Patient: What kind of tests?", "Will We Miss Cancers Following Updated Guidelines?",
    "Drug name: Aspirin", "Brand Name: Tylenol", "I miss my family", "Dr. [NAME] says hi",
]


@pytest.mark.parametrize("text", NEGATIVES, ids=[f"neg-{i}" for i in range(len(NEGATIVES))])
def test_negative_is_left_alone(text):
    assert deidentify(text) == (text, Counter())


def test_invalid_18_digit_number_is_neither_id_nor_phone():
    for bad in wrong_check(MOBILE_LIKE_ID):
        assert deidentify(f"编号{bad}") == (f"编号{bad}", Counter())


def test_medical_paragraph_survives_unchanged():
    text = ("患者男，45岁，因反复上腹痛3年、加重2天于2023-05-01入院。查体：T 38.5℃，P 96次/分，"
            "BP 120/80mmHg。血常规WBC 12.5×10^9/L，N 85%，Hb 135g/L。予奥美拉唑20mg每日2次，"
            "补液1500毫升。主治医生建议胃镜检查，家庭医生随访。The patient, aged 45, was given "
            "500 mg amoxicillin 3 times daily for 7 days; follow-up in 2 weeks at the clinic.")
    assert deidentify(text) == (text, Counter())


def test_counts_per_type_in_mixed_text():
    text = (f"患者张伟，男，身份证{VALID_ID}，电话13812345678或010-62345678，"
            "邮箱zw@example.com，住北京市朝阳区建国路88号，住院号：ZY20230011，"
            "医保卡号：1101234567，李娜医生主管。Contact Dr. Smith at (555) 123-4567.")
    got, counts = deidentify(text)
    assert counts == Counter(NAME=3, PHONE=3, ID=1, EMAIL=1, ADDRESS=1, MRN=1, INSURANCE=1)
    assert "13812345678" not in got and "zw@" not in got and VALID_ID not in got
    assert got.startswith("患者[NAME]，男，身份证[ID]，电话[PHONE]或[PHONE]")


@pytest.mark.parametrize("text", [text for _, text, _ in ALL_POSITIVES], ids=POSITIVE_IDS)
def test_second_pass_changes_nothing(text):
    once, _ = deidentify(text)
    assert deidentify(once) == (once, Counter())


# --- records ----------------------------------------------------------------------------------

PHONE_TEXT, PHONE_CLEAN = "电话13812345678", "电话[PHONE]"


def msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


RECORDS = [
    ({"text": PHONE_TEXT, "source": "x"}, {"text": PHONE_CLEAN, "source": "x"}),
    ({"messages": msgs(("system", "Dr. Smith"), ("user", PHONE_TEXT), ("assistant", "ok")),
      "id": 3},
     {"messages": msgs(("system", "Dr. [NAME]"), ("user", PHONE_CLEAN), ("assistant", "ok")),
      "id": 3}),
    ({"prompt": msgs(("user", PHONE_TEXT)), "chosen": msgs(("assistant", "a@b.com")),
      "rejected": msgs(("assistant", "a@b.com"))},
     {"prompt": msgs(("user", PHONE_CLEAN)), "chosen": msgs(("assistant", "[EMAIL]")),
      "rejected": msgs(("assistant", "[EMAIL]"))}),
    ({"prompt": msgs(("user", PHONE_TEXT)), "completion": msgs(("assistant", "ok")), "label": True},
     {"prompt": msgs(("user", PHONE_CLEAN)), "completion": msgs(("assistant", "ok")),
      "label": True}),
    ({"prompt": msgs(("user", PHONE_TEXT))}, {"prompt": msgs(("user", PHONE_CLEAN))}),
    ({"question": PHONE_TEXT, "options": {"A": "a@b.com", "B": "无"}, "answer": "A",
      "context": "姓名：张三", "subject": "内科"},
     {"question": PHONE_CLEAN, "options": {"A": "[EMAIL]", "B": "无"}, "answer": "A",
      "context": "姓名：[NAME]", "subject": "内科"}),
]


@pytest.mark.parametrize("rec,want", RECORDS)
def test_record_shapes_are_cleaned_without_mutating_the_input(rec, want):
    before = copy.deepcopy(rec)
    got, counts = deidentify_record(rec)
    assert got == want
    assert rec == before
    dumped = json.dumps(want, ensure_ascii=False)
    assert counts == Counter({t: dumped.count(f"[{t}]") for t in PII_TYPES if f"[{t}]" in dumped})


def test_record_counts_sum_over_fields():
    rec = {"messages": msgs(("user", "电话13812345678，手机13912345678"), ("assistant", "a@b.com"))}
    _, counts = deidentify_record(rec)
    assert counts == Counter(PHONE=2, EMAIL=1)


# --- real data: false-positive guard ----------------------------------------------------------


def _huatuo():
    path = DATA / "huatuo" / "llama_data.json"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def _chatdoctor():
    return json.loads((DATA / "chatdoctor" / "chatdoctor5k.json").read_text("utf-8"))


def _dialogue_csv():
    raw = (DATA / "chinese-medical-dialogue-data" / "internal_medicine_5000-6000.csv").read_bytes()
    return list(csv.DictReader(io.StringIO(raw.decode("gb18030"))))


@pytest.mark.skipif(not DATA.is_dir(), reason="shared data not available")
@pytest.mark.parametrize("load", [_huatuo, _chatdoctor, _dialogue_csv])
def test_real_medical_data_is_almost_never_changed(load):
    records = load()
    assert len(records) > 1000
    changed = 0
    for rec in records:
        found = Counter()
        for value in rec.values():
            found.update(deidentify(value)[1])
        changed += bool(found)
    # None of these hold real personal data (HuaTuo and ChatDoctor are model-generated): every
    # change is a false positive. Measured: 0 / 0 / 0 records.
    assert changed / len(records) < 0.01
