"""Every option of every config group composes and validates; bad values name their key."""
import pytest

import spaces
from search.config import GROUPS, ConfigError, compose, options, resolve, validate_target
from search.study_config import validate

NEEDS_ROOT = {"cifar10", "imagefolder"}
NOT_SEARCHABLE = {n for n, cls in spaces.SPACES.items() if not hasattr(cls, "supernet")}


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)
                                          if (g, o) not in {("space", n) for n in NOT_SEARCHABLE}])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}"] + ([f"data.root={tmp_path}"] if option in NEEDS_ROOT else [])
    cfg = resolve(compose(overrides))
    validate(cfg)
    assert cfg[group]["name" if group != "sampler" else "_target_"]


@pytest.mark.parametrize("space", sorted(NOT_SEARCHABLE))
def test_a_space_without_supernet_is_refused_for_search_and_pointed_to_calibration(space):
    with pytest.raises(ConfigError, match="cannot be searched.*search.calibrate"):
        validate(resolve(compose([f"space={space}"])))


@pytest.mark.parametrize("group,option", [(g, o) for g in ("target", "space", "runner") for o in options(g)])
def test_every_calibration_option_composes(group, option):
    extra = ["runner.serial=S1", "runner.binary=/bin/true"] if option == "adb" else []
    cfg = resolve(compose([f"{group}={option}", *extra], "calibrate"))
    validate_target(cfg["target"], cfg["space"].get("bits", []))
    assert cfg["runner"]["kind"] in ("auto", "file", "host", "litert", "adb")


def test_defaults_are_the_documented_ones():
    cfg = resolve(compose([]))
    assert (cfg["target"]["name"], cfg["space"]["name"], cfg["data"]["name"]) == ("snapdragon665", "mobilenetv2", "fashion_mnist")
    assert cfg["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert cfg["tracking"]["uri"] == "sqlite:///mlflow.db"
    assert cfg["study"]["name"] == "mobilenetv2-fashion_mnist-snapdragon665"


BAD = [
    (["target=nope"], "target: unknown option 'nope'; allowed: host, host-litert, snapdragon665"),
    (["sampler=cmaes"], "sampler: unknown option"),
    (["data=svhn"], "data: unknown option"),
    (["space=resnet"], "space: unknown option"),
    (["n_trials=0"], "n_trials: must be an integer >= 1"),
    (["n_trials=abc"], "n_trials"),
    (["seed=-1"], "seed"),
    (["study.name=a b"], "study.name"),
    (["objectives=[accuracy,energy]"], "objectives"),
    (["objectives=[]"], "objectives"),
    (["budget.latency_ms=-3"], "budget.latency_ms"),
    (["+budget.energy=3"], "budget.energy"),
    (["finetune.steps=-1"], "finetune.steps"),
    (["finetune.temperature=0"], "finetune.temperature"),
    (["supernet.epochs=0"], "supernet.epochs"),
    (["ray.cpus_per_trial=0"], "ray.cpus_per_trial"),
    (["ray.address=5"], "ray.address"),
    (["space.sparsity=[0.0,1.0]"], "sparsity"),
    (["space.widths=[0.5]"], "widths"),
    (["space.granularity=block"], "granularity"),
    (["target.kernels.8=int4"], "target.kernels.8"),
    (["data=cifar10"], "data.root"),
    (["nonsense=1"], "nonsense"),
    (["+nonsense=1"], "nonsense: unknown key"),
    (["+supernet.momentum=0.9"], "supernet.momentum: unknown key"),
    (["sampler._target_=os.system"], "sampler._target_: must be an Optuna sampler"),
    (["sampler._target_=optuna.samplers.BaseSampler"], "sampler._target_"),
    (["+sampler.foo=1"], "sampler.foo: not a setting of TPESampler"),
    (["sampler.n_startup_trials=abc"], "sampler.n_startup_trials: must be int"),
    (["sampler.n_startup_trials=2.5"], "sampler.n_startup_trials: must be int"),
    (["sampler=nsga2", "sampler.population_size=1"], "sampler: NSGAIISampler refuses its settings"),
    (["ray.address=nohost"], "ray.address"),
    (["ray.address=host:99999"], "ray.address"),
    (["space.bits=[8.5,32]"], "space.bits"),
    (["space.kernel=2"], "space.kernel"),
    (["space.stages=[[1,16,1]]"], "space.stages"),
    (["study.storage=5"], "study.storage"),
    (["data.val_size=1.5"], "data.val_size"),
    (["data=imagefolder", "data.root=''"], "data.root"),
    (["budget=5"], "budget"),
    (["target.speedups.int4=2"], "target.speedups.int4"),
    (["space.bits=[12,32]"], "space.bits"),  # narrowing to the target's bits leaves what no space offers
    (["target.speedup_range.int8=[2.0,3.0]"], "target.speedup_range.int8"),  # not around the speed-up used
    (["target.speedup_range.int8=2"], "target.speedup_range.int8"),
    (["+target.speedup_range.fp32=[1,2]"], "target.speedup_range.fp32"),  # no declared fp32 speed-up
    (["target.border_cost=-1"], "target.border_cost"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(resolve(compose(overrides)))
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_the_default_target_narrows_the_space_to_the_precisions_a_tflite_holds():
    assert resolve(compose([]))["space"]["bits"] == [8, 32]  # the default space offers [4, 8, 16, 32]
    assert resolve(compose(["target=host"]))["space"]["bits"] == [4, 8, 16, 32]


def test_target_must_say_how_every_searched_bit_width_runs():
    cfg = resolve(compose(["target=host"]))
    del cfg["target"]["kernels"][4]
    with pytest.raises(ConfigError, match="target.kernels: no entry for 4-bit layers"):
        validate(cfg)
