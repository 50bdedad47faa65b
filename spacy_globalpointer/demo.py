"""A small generated Chinese NER dataset with nested entities, for demos and smoke tests.

Sentences come from templates filled with names this module holds (nothing is downloaded), so the
data is free to ship. Organisations often contain a place (ORG 北京大学 holds LOC 北京) or another
organisation (ORG 北京大学医学院 holds ORG 北京大学), and places can hold places (LOC 浙江省杭州市
holds LOC 浙江省 and LOC 杭州市). The dev split mixes in names, suffixes and templates that never
occur in train, so its F1 measures generalisation rather than memory. The same seed always gives
the same files, byte for byte.
"""
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

DEFAULT_SEED = 0
DEFAULT_N_TRAIN = 1500
DEFAULT_N_DEV = 300
HELD_OUT_SHARE = 0.5  # chance that a dev slot draws from the dev-only lists
DEV_TEMPLATE_SHARE = 0.35  # chance that a dev sentence uses a dev-only template
LABELS = ("LOC", "ORG", "PER")

Record = Dict[str, object]  # {"text": str, "spans": [{"start": int, "end": int, "label": str}]}


@dataclass(frozen=True)
class Names:
    """One list of names for train, and one that only dev draws from."""

    train: Tuple[str, ...]
    dev_only: Tuple[str, ...]


CITIES = Names(
    ("北京", "上海", "广州", "深圳", "杭州", "南京", "武汉", "成都", "西安", "重庆", "天津", "苏州", "长沙",
     "青岛", "厦门", "大连", "昆明", "合肥", "郑州", "济南", "福州", "沈阳", "长春", "兰州", "贵阳", "南宁",
     "太原", "南昌", "宁波", "无锡", "温州", "珠海"),
    ("哈尔滨", "石家庄", "乌鲁木齐", "呼和浩特", "洛阳", "桂林", "扬州", "烟台", "绍兴", "泉州"),
)
PROVINCES = Names(
    ("广东", "浙江", "江苏", "四川", "湖北", "湖南", "山东", "河南", "福建", "辽宁", "陕西", "云南"),
    ("河北", "山西", "江西", "吉林", "贵州", "甘肃"),
)
# City organisations: ORG "<city><suffix>" holds LOC "<city>".
CITY_ORG_SUFFIXES = Names(
    ("大学", "理工大学", "师范大学", "人民医院", "银行", "日报社", "第一中学", "博物馆", "图书馆", "海关",
     "电视台", "地铁集团", "市政府", "市公安局", "市教育局", "歌剧院"),
    ("中心医院", "科技馆", "交通大学", "市税务局", "农业大学"),
)
UNIVERSITY_SUFFIXES = Names(("大学", "理工大学", "师范大学"), ("交通大学", "农业大学"))
# Units of a university: ORG "<university><unit>" holds ORG "<university>".
UNITS = Names(("医学院", "法学院", "计算机学院", "附属医院", "出版社", "外国语学院"), ("经济学院", "物理系", "档案馆"))
BRANDS = Names(
    ("星河", "远航", "蓝海", "恒信", "华宇", "天成", "瑞丰", "启明", "博远", "鼎新", "宏达", "金桥", "安泰",
     "云帆", "青松", "万通", "嘉禾", "盛世"),
    ("睿思", "朗峰", "德润", "凯旋", "锦程"),
)
BRAND_SUFFIXES = Names(
    ("科技公司", "集团", "物流公司", "律师事务所", "研究院", "基金会", "文化传媒公司", "足球俱乐部"),
    ("生物公司", "建筑设计院"),
)
SURNAMES = Names(
    ("王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴", "徐", "孙", "胡", "朱", "高", "林", "何",
     "郭", "马", "罗", "梁", "宋", "郑", "谢", "欧阳", "司马"),
    ("韩", "唐", "冯", "董", "萧", "程", "诸葛"),
)
GIVEN_CHARS = Names(
    ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明", "超",
     "秀", "霞", "平", "刚", "桂", "文", "华", "建", "国", "志", "红", "玉", "兰", "海", "波"),
    ("昊", "然", "睿", "琪", "瑶", "宇", "航", "鹏", "婷", "晨"),
)
PERSON_TITLES = ("", "", "", "教授", "先生", "女士", "博士", "主任")

# Clause templates. {PER}, {LOC}, {ORG} are entities; {DATE} and {NUM} are plain text.
TEMPLATES = Names(
    (
        "{PER}毕业于{ORG}",
        "{PER}目前在{ORG}担任研究员",
        "{ORG}与{ORG}签署了合作协议",
        "{DATE}，{PER}来到{LOC}参加学术会议",
        "{ORG}位于{LOC}",
        "{PER}和{PER}一起从{LOC}出发前往{LOC}",
        "{ORG}发布公告称，{PER}将出任新一届负责人",
        "来自{ORG}的{PER}在会上作了报告",
        "{LOC}的游客数量在{DATE}增长了{NUM}%",
        "{PER}表示，{ORG}今年将继续加大投入",
        "记者从{ORG}获悉，该项目预计{DATE}完工",
        "{PER}在{LOC}创办了{ORG}",
        "{ORG}的学生在比赛中获得了一等奖",
        "{PER}的父亲曾在{ORG}工作多年",
        "据{ORG}统计，{LOC}共有{NUM}家企业参与",
        "{PER}从{ORG}调任至{ORG}",
        "{LOC}和{LOC}之间的高铁线路正式开通",
        "{ORG}邀请{PER}担任顾问",
        "{PER}说，{LOC}的冬天比{LOC}冷得多",
        "{ORG}向{LOC}捐赠了一批物资",
        "{PER}在{ORG}的演讲吸引了{NUM}名听众",
        "{DATE}，{ORG}在{LOC}召开了新闻发布会",
        "{PER}是{ORG}的创始人之一",
        "{PER}把孩子送到了{ORG}读书",
        # Negatives and distractors: institution words without a name are not entities.
        "不少大学生在银行办理了银行卡",
        "{DATE}，市政府召开了工作会议",
        "这家医院的医生和护士都很忙",
        "很多人认为这所大学的图书馆很漂亮",
        "全市共有{NUM}所中学参加了这次活动",
        "该公司的股价在{DATE}上涨了{NUM}%",
    ),
    (
        "{PER}向{ORG}提交了申请材料",
        "{ORG}和{ORG}联合举办了展览",
        "{DATE}，{LOC}举行了马拉松比赛，{PER}获得冠军",
        "{PER}曾在{LOC}生活了{NUM}年",
        "经过调查，{ORG}决定暂停该项目",
        "{PER}认为{ORG}的管理方式值得学习",
        "附近的几所大学今年都扩大了招生规模",
        "{LOC}的居民对{ORG}的服务很满意",
    ),
)
OPENERS = ("", "", "", "", "据报道，", "记者了解到，", "据悉，", "另外，", "与此同时，")
CLOSERS = ("。", "。", "。", "！", "，引起了广泛关注。", "，情况仍在进一步了解中。")
SLOT = re.compile(r"\{(PER|LOC|ORG|DATE|NUM)\}")


@dataclass(frozen=True)
class Fragment:
    """A piece of text and its entity spans as (start, end exclusive, label), offsets within the piece."""

    text: str
    spans: Tuple[Tuple[int, int, str], ...] = ()

    def __add__(self, other: "Fragment") -> "Fragment":
        shift = len(self.text)
        return Fragment(self.text + other.text, self.spans + tuple((s + shift, e + shift, l) for s, e, l in other.spans))

    def labelled(self, label: str) -> "Fragment":
        """This fragment as one entity of `label`, keeping the entities inside it."""
        return Fragment(self.text, ((0, len(self.text), label),) + self.spans)


class Sampler:
    """Draws names for one split: train from the train lists, dev partly from the dev-only lists."""

    def __init__(self, rng: random.Random, held_out_share: float):
        self.rng = rng
        self.held_out_share = held_out_share

    def pick(self, names: Names) -> str:
        pool = names.dev_only if self.rng.random() < self.held_out_share else names.train
        return self.rng.choice(pool)

    def city(self) -> Fragment:
        return Fragment(self.pick(CITIES)).labelled("LOC")

    def person(self) -> Fragment:
        given = "".join(self.pick(GIVEN_CHARS) for _ in range(self.rng.choice((1, 2, 2))))
        name = Fragment(self.pick(SURNAMES) + given).labelled("PER")
        return name + Fragment(self.rng.choice(PERSON_TITLES))

    def location(self) -> Fragment:
        kind = self.rng.random()
        if kind < 0.45:
            return self.city()
        if kind < 0.65:
            return Fragment(self.pick(CITIES) + "市").labelled("LOC")
        province = Fragment(self.pick(PROVINCES) + "省").labelled("LOC")
        if kind < 0.8:
            return province
        return (province + Fragment(self.pick(CITIES) + "市").labelled("LOC")).labelled("LOC")

    def city_org(self, suffixes: Names = CITY_ORG_SUFFIXES) -> Fragment:
        return (self.city() + Fragment(self.pick(suffixes))).labelled("ORG")

    def brand(self) -> Fragment:
        name = Fragment(self.pick(BRANDS) + self.pick(BRAND_SUFFIXES))
        if self.rng.random() < 0.3:
            name = self.city() + name
        return name.labelled("ORG")

    def organisation(self) -> Fragment:
        kind = self.rng.random()
        if kind < 0.45:
            return self.city_org()
        if kind < 0.65:
            return (self.city_org(UNIVERSITY_SUFFIXES) + Fragment(self.pick(UNITS))).labelled("ORG")
        return self.brand()

    def date(self) -> Fragment:
        kind = self.rng.random()
        if kind < 0.4:
            return Fragment(f"{self.rng.randint(2005, 2024)}年{self.rng.randint(1, 12)}月")
        if kind < 0.8:
            return Fragment(f"{self.rng.randint(1, 12)}月{self.rng.randint(1, 28)}日")
        return Fragment(self.rng.choice(("上周", "昨天", "今年", "去年年底")))

    def number(self) -> Fragment:
        return Fragment(str(self.rng.randint(2, 300)))

    def fill(self, template: str) -> Fragment:
        """The template with each slot replaced by a freshly drawn fragment."""
        fillers: Dict[str, Callable[[], Fragment]] = {
            "PER": self.person, "LOC": self.location, "ORG": self.organisation, "DATE": self.date, "NUM": self.number,
        }
        result = Fragment("")
        for i, part in enumerate(SLOT.split(template)):
            result = result + (fillers[part]() if i % 2 else Fragment(part))
        return result


def _sentence(sampler: Sampler, templates: Sequence[str]) -> Fragment:
    """An opener, one or two filled clauses and a closer."""
    rng = sampler.rng
    clauses = [sampler.fill(rng.choice(templates)) for _ in range(2 if rng.random() < 0.25 else 1)]
    sentence = Fragment(rng.choice(OPENERS)) + clauses[0]
    for clause in clauses[1:]:
        sentence = sentence + Fragment("，") + clause
    return sentence + Fragment(rng.choice(CLOSERS))


def _record(fragment: Fragment) -> Record:
    spans = sorted(set(fragment.spans))
    return {"text": fragment.text, "spans": [{"start": s, "end": e, "label": l} for s, e, l in spans]}


def _split(rng: random.Random, n: int, held_out_share: float, template_share: float, exclude: set) -> List[Record]:
    """`n` records with texts that are unique and not in `exclude`."""
    sampler = Sampler(rng, held_out_share)
    records: List[Record] = []
    seen = set(exclude)
    for _ in range(n * 50):
        if len(records) == n:
            break
        templates = TEMPLATES.dev_only if rng.random() < template_share else TEMPLATES.train
        record = _record(_sentence(sampler, templates))
        if record["text"] not in seen:
            seen.add(record["text"])
            records.append(record)
    if len(records) < n:
        raise RuntimeError(f"Could not draw {n} distinct sentences; ask for fewer.")
    return records


def generate_demo(
    *, seed: int = DEFAULT_SEED, n_train: int = DEFAULT_N_TRAIN, n_dev: int = DEFAULT_N_DEV
) -> Tuple[List[Record], List[Record]]:
    """Train and dev records in the project's JSONL format (end-exclusive character offsets)."""
    rng = random.Random(seed)
    train = _split(rng, n_train, 0.0, 0.0, set())
    dev = _split(rng, n_dev, HELD_OUT_SHARE, DEV_TEMPLATE_SHARE, {r["text"] for r in train})
    return train, dev


def _nested_count(record: Record) -> int:
    """How many spans of a record lie inside another span of it."""
    spans = [(s["start"], s["end"]) for s in record["spans"]]
    return sum(any(o != (s, e) and o[0] <= s and e <= o[1] for o in spans) for s, e in spans)


def _stats(records: List[Record]) -> str:
    labels = Counter(s["label"] for r in records for s in r["spans"])
    n_spans = sum(labels.values())
    return (
        f"{len(records)} sentences, {n_spans} spans ({', '.join(f'{l} {labels[l]}' for l in LABELS)}), "
        f"{sum(map(_nested_count, records))} nested inside another span, "
        f"{sum(not r['spans'] for r in records)} sentences without entities"
    )


def _readme(seed: int, train: List[Record], dev: List[Record]) -> str:
    train_texts = {r["text"][s["start"] : s["end"]] for r in train for s in r["spans"]}
    dev_spans = [r["text"][s["start"] : s["end"]] for r in dev for s in r["spans"]]
    unseen = sum(text not in train_texts for text in dev_spans)
    return f"""# Demo data: generated Chinese nested NER

Written by `python -m spacy_globalpointer demo assets/demo --seed {seed}` (`spacy_globalpointer/demo.py`).
Do not edit by hand: the tests check that these files equal a fresh generation.

- `train.jsonl`: {_stats(train)}
- `dev.jsonl`: {_stats(dev)}
- Labels: {", ".join(LABELS)}. Dev spans whose text never is a train span: {unseen} of {len(dev_spans)}.

Sentences are filled from templates with names the generator holds (pure Python, `random.Random({seed})`):
person names from surnames and given-name characters, cities and provinces, and organisations that hold
other entities: ORG 北京大学 holds LOC 北京, ORG 北京大学医学院 holds ORG 北京大学, LOC 浙江省杭州市 holds
LOC 浙江省 and LOC 杭州市. Some templates have no entities, or institution words without a name
(大学生, 市政府), so the model cannot tag every 大学 or 银行. Dev draws half its names, and about a third of
its templates, from lists train never uses, so dev F1 measures generalisation.

Format: one JSON object per line, `{{"text": str, "spans": [{{"start": int, "end": int, "label": str}}]}}`,
character offsets with the end exclusive. Convert with
`python -m spacy_globalpointer convert jsonl assets/demo/train.jsonl corpus/train.spacy --lang zh`.
The text is synthetic; it is released with the project under its MIT license.
"""


def _jsonl(records: List[Record]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_demo(
    output_dir: Union[str, Path], *, seed: int = DEFAULT_SEED, n_train: int = DEFAULT_N_TRAIN, n_dev: int = DEFAULT_N_DEV
) -> Dict[str, Path]:
    """Write train.jsonl, dev.jsonl and README.md into `output_dir`; returns their paths by name."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    train, dev = generate_demo(seed=seed, n_train=n_train, n_dev=n_dev)
    contents = {"train.jsonl": _jsonl(train), "dev.jsonl": _jsonl(dev), "README.md": _readme(seed, train, dev)}
    paths = {}
    for name, content in contents.items():
        paths[name] = output_dir / name
        paths[name].write_text(content, encoding="utf-8", newline="\n")
    return paths
