"""Offline tokenisation and lemmatisation for the hallucination metrics (CHAIR, AMBER).

The reference scorers call `nltk.word_tokenize`, pattern.en's `singularize` or NLTK's WordNet lemmatizer with
`nltk.pos_tag`. None of their data (punkt, the perceptron tagger, WordNet) can be downloaded here, so:

- `tokenize` re-implements the Penn Treebank rules that `word_tokenize` applies (punctuation, clitics such as
  "'s" and "n't", quotes) plus punkt's effect that matters to us: a sentence-final period is its own token.
  Abbreviation handling is a short fixed list instead of punkt's learned one (only token counts can differ).
- `singularize` is pattern.en's rule-based singulariser, rules re-typed here, quirks included ("has" -> "ha",
  "process" -> "proces", "bus" -> "bu"): the published CHAIR numbers were computed with them.
- `pos` mode: a small rule-based tagger decides noun / verb / adjective / other, then `lemminflect` (a PyPI
  package that ships its lexicon) gives the lemma, shortest form first as WordNet's `lemmatize` does. This
  reproduces the variant's signature behaviour ("skiing" -> "ski", "seated" -> "seat") but is not
  token-for-token identical to NLTK's perceptron tagger on noun/verb-ambiguous words.

Every per-type function is cached with `functools.lru_cache`: captions repeat a small vocabulary.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

# ---------------------------------------------------------------- tokenizer (Treebank rules, compiled once)
_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc e.g i.e u.s no fig approx inc ltd co".split())
_SENT_PERIOD = re.compile(r"(?<=[^\s.])\.(?=[\]\)}>\"']*(?:\s|$))")
# (substring that must be present for the rule to fire, rule, replacement): the substring test skips most
# passes on ordinary captions, which is where the tokenizer spends its time.
_SUBS: list[tuple[str, re.Pattern, str]] = [
    ('"', re.compile(r'^\s*"'), " `` "),
    ('"', re.compile(r'([ (\[{<])("|\'{2})'), r"\1 `` "),
    ("'", re.compile(r"([ (\[{<])('')"), r"\1 `` "),
    ("", re.compile(r"([:,])([^\d])"), r" \1 \2"),
    ("", re.compile(r"([:,])$"), r" \1 "),
    ("", re.compile(r"\.\.\.|--|[;@#$%&?!\]\[(){}<>]"), r" \g<0> "),
    ("'", re.compile(r"([^'])' "), r"\1 ' "),
    ('"', re.compile(r'"'), " '' "),
    ("'", re.compile(r"(\S)('')"), r"\1 \2 "),
    ("'", re.compile(r"([^' ])('[sSmMdD]|') "), r"\1 \2 "),
    ("'", re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    ("an", re.compile(r"(?i)\b(can)(not|'t)\b"), r" \1 \2 "),
    ("na", re.compile(r"(?i)\b(gon|wan)(na)\b"), r" \1 \2 "),
]


def _split_period(match: re.Match) -> str:
    # punkt does not end a sentence after a known abbreviation or an initial ("j. smith").
    text, end = match.string, match.start()
    start = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end)) + 1
    word = text[start:end].lower().lstrip("([{<\"'`")
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or "." in word:
        return "."
    return " . "


def tokenize(text: str) -> list[str]:
    """Penn Treebank-style tokens, as `nltk.word_tokenize` gives them for ordinary captions."""
    text = " " + _SENT_PERIOD.sub(_split_period, text) + " "
    for trigger, pattern, repl in _SUBS:
        if trigger in text:
            text = pattern.sub(repl, text)
    return text.split()


# ---------------------------------------------------------------- pattern.en singularize (rules re-typed)
_SINGULAR_RULES = [(re.compile(p), r) for p, r in [
    (r"(?i)(.)ae$", r"\1a"), (r"(?i)(.)itis$", r"\1itis"), (r"(?i)(.)eaux$", r"\1eau"),
    (r"(?i)(quiz)zes$", r"\1"), (r"(?i)(matr)ices$", r"\1ix"), (r"(?i)(ap|vert|ind)ices$", r"\1ex"),
    (r"(?i)^(ox)en", r"\1"), (r"(?i)(alias|status)es$", r"\1"), (r"(?i)([octop|vir])i$", r"\1us"),
    (r"(?i)(cris|ax|test)es$", r"\1is"), (r"(?i)(shoe)s$", r"\1"), (r"(?i)(o)es$", r"\1"),
    (r"(?i)(bus)es$", r"\1"), (r"(?i)([m|l])ice$", r"\1ouse"), (r"(?i)(x|ch|ss|sh)es$", r"\1"),
    (r"(?i)(m)ovies$", r"\1ovie"), (r"(?i)(.)ombies$", r"\1ombie"), (r"(?i)(s)eries$", r"\1eries"),
    (r"(?i)([^aeiouy]|qu)ies$", r"\1y"),
    (r"([aeo]l)ves$", r"\1f"), (r"([^d]ea)ves$", r"\1f"), (r"arves$", "arf"), (r"erves$", "erve"),
    (r"([nlw]i)ves$", r"\1fe"), (r"(?i)([lr])ves$", r"\1f"), (r"([aeo])ves$", r"\1ve"),
    (r"(?i)(sive)s$", r"\1"), (r"(?i)(tive)s$", r"\1"), (r"(?i)(hive)s$", r"\1"), (r"(?i)([^f])ves$", r"\1fe"),
    (r"(?i)(^analy)ses$", r"\1sis"),
    (r"(?i)((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis"),
    (r"(?i)(.)opses$", r"\1opsis"), (r"(?i)(.)yses$", r"\1ysis"), (r"(?i)(h|d|r|o|n|b|cl|p)oses$", r"\1ose"),
    (r"(?i)(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose"), (r"(?i)(.)oses$", r"\1osis"),
    (r"(?i)([ti])a$", r"\1um"), (r"(?i)(n)ews$", r"\1ews"), (r"(?i)s$", ""),
]]
_UNINFLECTED = (
    "bison bream breeches britches carp chassis christmas clippers cod contretemps corps debris diabetes djinn "
    "eland elk flounder gallows georgia graffiti headquarters herpes high-jinks homework innings jackanapes "
    "mackerel measles mews mumps news pincers pliers proceedings rabies salmon scissors series shears species "
    "swine swiss trout tuna whiting wildebeest "
    # the uncountable list is checked the same way, so it is merged here
    "advice bread butter cheese electricity equipment fruit furniture garbage gravel happiness information "
    "ketchup knowledge love luggage mathematics mayonnaise meat mustard news progress research rice sand "
    "software understanding water").split()
# "^pie" and "^tie" are in pattern's list with a literal caret, so they never match; kept out on purpose.
_SINGULAR_IE = (
    "alergie cutie hoagie newbie softie veggie auntie doggie hottie nightie sortie weenie beanie eyrie indie "
    "oldie stoolie yuppie birdie freebie junkie sweetie zombie bogie goonie laddie pixie techie bombie groupie "
    "laramie quickie collie hankie lingerie reverie toughie cookie hippie meanie rookie valkyrie").split()
_SINGULAR_IRREGULAR = {
    "atlantes": "atlas", "atlases": "atlas", "axes": "axe", "beeves": "beef", "brethren": "brother",
    "children": "child", "corpora": "corpus", "corpuses": "corpus", "ephemerides": "ephemeris", "feet": "foot",
    "ganglia": "ganglion", "geese": "goose", "genera": "genus", "genii": "genie", "graffiti": "graffito",
    "helves": "helve", "kine": "cow", "leaves": "leaf", "loaves": "loaf", "men": "man", "mongooses": "mongoose",
    "monies": "money", "moves": "move", "mythoi": "mythos", "numena": "numen", "occipita": "occiput",
    "octopodes": "octopus", "opera": "opus", "opuses": "opus", "our": "my", "oxen": "ox", "penes": "penis",
    "penises": "penis", "people": "person", "sexes": "sex", "soliloquies": "soliloquy", "teeth": "tooth",
    "testes": "testis", "trilbys": "trilby", "turves": "turf", "zoa": "zoon",
}
_PLURAL_PREPOSITIONS = frozenset(
    "about above across after among around at athwart before behind below beneath beside besides between "
    "betwixt beyond but by during except for from in into near of off on onto out over since till to under "
    "until unto upon with".split())


@lru_cache(maxsize=None)
def singularize(word: str) -> str:
    """pattern.en `singularize`, including its suffix checks ("is" stays because "chassis" ends with it)."""
    if "-" in word:
        parts = word.split("-")
        if len(parts) > 1 and parts[1] in _PLURAL_PREPOSITIONS:
            return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    if any(x.endswith(lower) for x in _UNINFLECTED):
        return word
    for x in _SINGULAR_IE:
        if lower.endswith(x + "s"):
            return lower
    for plural, singular in _SINGULAR_IRREGULAR.items():
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", singular, word)
    for suffix, inflection in _SINGULAR_RULES:
        if suffix.search(word):
            return suffix.sub(inflection, word)  # unmatched groups expand to "" as in pattern
    return word


# ---------------------------------------------------------------- POS-aware lemmatisation (WordNet style)
NOUN, VERB, ADJ, OTHER = "n", "v", "a", "x"
_CLOSED = {}
for _tag, _words in (
    (OTHER, "a an the this that these those some any each every no another either neither all both half "
            "i you he she it we they me him us them my your his its our their mine yours hers ours theirs "
            "myself yourself himself herself itself ourselves themselves who whom whose which what there here "
            "and or but nor so yet if because while although though as than whether "
            "in on at of to for with by from into onto over under above below behind beside between among "
            "through across along around near toward towards upon within without against during about off up "
            "down out next inside outside beneath underneath atop "
            "not n't very also just too quite rather only even still really almost always often never "
            "can could will would shall should may might must 'd 'll "
            "one two three four five six seven eight nine ten several many few more most less much other "
            ". , ; : ! ? ' '' `` ( ) - -- ... 's"),
    (VERB, "is are was were be been being am 'm 're has have had 've having do does did done "
           "sits stands holds shows appears seems looks"),
):
    for _w in _words.split():
        _CLOSED[_w] = _tag
_DETERMINERS = frozenset("a an the this that these those my your his her its our their some any each every "
                         "no another several many few".split())
_AUX = frozenset("is are was were be been being am 'm 're has have had".split())


def tag_coarse(tokens: list[str]) -> list[str]:
    """Coarse tags (n/v/a/x) from closed-class lists and suffixes.

    Why these rules: the only tag decisions that change an object count are "-ing"/"-ed" forms (verb lemma
    "ski", "seat", "tie" vs. the unchanged noun) and plural nouns vs. 3rd-person verbs, which lemmatise the
    same. An "-ing"/"-ed" word right after a determiner or possessive is a noun/adjective ("the skiing"),
    elsewhere a verb ("a man skiing", "people seated"), as the perceptron tagger mostly decides.
    """
    tags = []
    prev = ""
    for tok in tokens:
        tag = _CLOSED.get(tok)
        if tag is None:
            if not tok[:1].isalpha():
                tag = OTHER
            elif len(tok) > 4 and tok.endswith("ing"):
                tag = NOUN if prev in _DETERMINERS else VERB
            elif len(tok) > 3 and tok.endswith("ed"):
                tag = ADJ if (prev in _DETERMINERS and prev not in _AUX) else VERB
            elif len(tok) > 3 and tok.endswith("ly"):
                tag = OTHER
            else:
                tag = NOUN
        tags.append(tag)
        prev = tok
    return tags


_UPOS = {NOUN: "NOUN", VERB: "VERB", ADJ: "ADJ"}


@lru_cache(maxsize=None)
def wordnet_lemma(word: str, tag: str = NOUN) -> str:
    """Lemma of `word` for a coarse tag; the shortest candidate wins, as in NLTK's WordNetLemmatizer."""
    upos = _UPOS.get(tag)
    if upos is None or not word[:1].isalpha():
        return word
    try:
        from lemminflect import getLemma
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("lemmatizer 'pos' needs the PyPI package lemminflect (pip install lemminflect); "
                          "use --lemmatizer singularize otherwise") from None
    lemmas = getLemma(word, upos=upos, lemmatize_oov=False)
    if not lemmas:
        return word
    return min(lemmas, key=len)


def lemmatize_pos(tokens: list[str]) -> list[str]:
    tags = tag_coarse(tokens)
    return [wordnet_lemma(t, g) for t, g in zip(tokens, tags)]


def lemmatize_singularize(tokens: list[str]) -> list[str]:
    return [singularize(t) for t in tokens]


LEMMATIZERS: dict[str, Callable[[list[str]], list[str]]] = {
    "singularize": lemmatize_singularize,
    "pos": lemmatize_pos,
}


def get_lemmatizer(name: str) -> Callable[[list[str]], list[str]]:
    try:
        fn = LEMMATIZERS[name]
    except KeyError:
        raise ValueError(f"unknown lemmatizer {name!r}; choose one of {sorted(LEMMATIZERS)}") from None
    if name == "pos":
        wordnet_lemma("dogs")  # fail at start-up, not mid-run, when lemminflect is missing
    return fn


def extract_nouns(text: str) -> list[str]:
    """Noun lemmas of `text` in order (AMBER's `extract_nouns`: NN* tokens, WordNet noun lemma)."""
    tokens = tokenize(text.lower())
    tags = tag_coarse(tokens)
    return [wordnet_lemma(t, NOUN) for t, g in zip(tokens, tags) if g == NOUN]
