"""Caption cleaning on hand-made examples shaped like the real package metadata."""
from evaclip_demo.offline import captions as cap
from evaclip_demo.offline.classes import noto_class, tuxpaint_class
from evaclip_demo.offline.sources import hexcode

RDF = """<svg><metadata><rdf:RDF><cc:Work rdf:about="">
<dc:format>image/svg+xml</dc:format><dc:title>Ice Cream &amp; Cone</dc:title>
<dc:description>Three scoops</dc:description>
<dc:subject><rdf:Bag><rdf:li>dessert</rdf:li><rdf:li>food</rdf:li></rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>ganson</dc:title></cc:Agent></dc:creator>
</cc:Work></rdf:RDF></metadata></svg>"""


def test_parse_rdf_reads_work_title_not_creator_title():
    meta = cap.parse_clipart_rdf(RDF)
    assert meta.title == "Ice Cream & Cone"
    assert meta.description == "Three scoops"
    assert meta.keywords == ["dessert", "food"]
    assert meta.creator == "ganson"
    assert cap.parse_clipart_rdf("<svg/>") == cap.ClipartMeta()


def test_words_from_stem_drops_counters_camel_case_and_author_prefixes():
    assert cap.words_from_stem("gnome-fs-trash-full") == "trash full"
    assert cap.words_from_stem("cone3_ganson") == "cone3"
    assert cap.words_from_stem("aquila_frontale_architet_01", "Architetto Francesco Rollandin") == "aquila frontale"
    assert cap.words_from_stem("simpleHouse_02") == "simple house"


def test_clean_title():
    assert cap.clean_title("Ice_Cream-Cone 3") == "Ice Cream Cone"
    assert cap.clean_title("Mouse (by me@example.org)") == "Mouse"
    assert cap.clean_title("redApple") == "red Apple"


def test_clipart_name_rules():
    meta = cap.ClipartMeta(title="Part of the Flat Icon Collection (Wed Aug 25)")
    # boilerplate prefix -> the file stem instead
    assert cap.clipart_name("computer/icons/flat-theme/action/Network_1", meta, 1) == "network"
    # a title repeated often is boilerplate even without a known prefix
    assert cap.clipart_name("shapes/lemon/apple_red", cap.ClipartMeta(title="Lemon SVG theme"), 416) == "apple red"
    assert cap.clipart_name("shapes/lemon/apple_red", cap.ClipartMeta(title="Apple"), 1) == "Apple"
    assert cap.clipart_name("recreation/games/cards/simple_h_q", meta, 1) == "the queen of hearts playing card"
    assert cap.clipart_name("recreation/games/cards/simple_c_1", meta, 1) == "the ace of clubs playing card"
    star = cap.ClipartMeta(title="gramastar")
    assert cap.clipart_name("shapes/stars/star_77pt_01", star, 1375) == "a star polygon with 77 points"
    slug = cap.ClipartMeta(title="Clipart by Nicu Buculei - jigsaw_red_10")
    assert cap.clipart_name("x/jigsaw_red_10", slug, 1) == "jigsaw red"


def test_clipart_caption_filters_description_and_keywords():
    meta = cap.ClipartMeta(title="Scissors", description="Generic scissor outline",
                           keywords=["tool", "hash", "0x93a3a4c", "Scissors", "someone", "tool"], creator="someone")
    caption, name = cap.clipart_caption("household/tools/scissors_02", meta, 1)
    assert name == "Scissors"
    # junk keywords, author, duplicates and words of the name are dropped; folders fill the free slots
    assert caption == "Scissors. Generic scissor outline. tool, household"
    for bad in ("see http://x.org", "HASH(0x1234)", "mail me@x.org", "Ejemplo de servidor Jabber ñññ ááá",
                "Created with Inkscape", "ab", "Scissors."):
        m = cap.ClipartMeta(title="Scissors", description=bad)
        assert cap.clipart_caption("tools/scissors_02", m, 1)[0] == "Scissors. tools", bad
    # a description shared by a whole collection is boilerplate
    m = cap.ClipartMeta(title="Router", description="collection of satellite engineering related clipart")
    assert cap.clipart_caption("computer/router", m, 1, description_count=1)[0] == \
        "Router. collection of satellite engineering related clipart"
    assert cap.clipart_caption("computer/router", m, 1, description_count=6)[0] == "Router"


def test_emoji_caption_drops_region_codes_and_repeats_and_caps_tags():
    assert cap.emoji_caption("flag: Portugal", ["PT", "flag", "Portugal"]) == "Flag: Portugal"
    assert cap.emoji_caption("grinning face", ["face", "grin", "happy", "Happy", "laugh", "smile", "teeth"]) \
        == "Grinning face. happy, laugh, smile, teeth"
    assert cap.emoji_caption("star", []) == "Star"


def test_class_tables_map_folders_and_subgroups():
    assert tuxpaint_class("clothes/hats/top_hat") == "hat"  # specific folder wins over "clothes"
    assert tuxpaint_class("clothes/shirt") == "piece of clothing"
    assert tuxpaint_class("animals/birds/cartoon/robin") == "bird"
    assert tuxpaint_class("hobbies/kite") == ""
    assert noto_class("face-hat") == "smiley face"
    assert noto_class("country-flag") == "national flag"
    assert noto_class("keycap") == ""
    assert hexcode("0023-fe0f-20e3") == "0023-20E3"


def test_emoji_name_key_matches_fluent_file_names_to_cldr_names():
    from evaclip_demo.offline.sources import emoji_name_key
    for cldr, stem in (("A button (blood type)", "a-button-blood-type"), ("woman’s hat", "womans-hat"),
                       ("keycap: 1", "keycap-1"), ("flag: France", "flag-france"), ("1st place medal", "1st-place-medal")):
        assert emoji_name_key(cldr) == emoji_name_key(stem)
    assert emoji_name_key("dog face") != emoji_name_key("dog")
