"""train/config.py: `--help` lists every setting once, by group, and the groups cover TrainConfig exactly."""
import dataclasses

from train.config import HELP_GROUPS, TrainConfig, build_parser, config_from_args


def test_every_setting_is_in_exactly_one_help_group():
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert len(grouped) == len(set(grouped))


def test_help_reads_group_by_group_in_order():
    text = build_parser().format_help()
    positions = [text.index(f"\n{title}:\n") for title in HELP_GROUPS]
    assert positions == sorted(positions)
    swav = text[text.index("\nSwAV: swav:\n"):text.index("\nDeep InfoMax: dim:\n")]
    assert "--num-prototypes" in swav and "--queue-size" not in swav and "--teacher " not in swav


def test_a_grouped_flag_still_fills_its_field():
    config, _ = config_from_args(["--method", "swav", "--num-prototypes", "17", "--no-shuffle-bn"])
    assert config.num_prototypes == 17 and config.shuffle_bn is False and config.method == "swav"


def test_help_shows_no_empty_or_doubled_default_and_every_enumerated_flag_lists_its_choices():
    from train.config import enumerated_settings

    text = build_parser().format_help()
    assert "(default: )" not in text
    for block in text.split("\n  --")[1:]:
        assert block.count("(default:") + block.count("(default ") <= 1, block
    for name, (_, choices) in enumerated_settings().items():
        assert "--" + name.replace("_", "-") + " {" + ",".join(choices) + "}" in " ".join(text.split()), name


def test_a_typo_in_an_enumerated_flag_is_refused_while_parsing(capsys):
    from train.main import main

    assert main(["--loader", "resdent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown loader 'resdent'; valid: resident, torch, dali, ffcv"
    assert main(["--model", "resnet8+mlp64", "--list-methods"]) == 0  # a representation backbone's name parses
