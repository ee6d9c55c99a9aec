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
