"""Configuration: space files (YAML) -> frozen, validated records; the engine-neutral space.

    schema.py    how records are declared (frozen, unknown keys rejected)
    families.py  the model families' records (vgg, allcnn, resnet50) and block vocabulary
    records.py   data, training, the airbench recipe, objective, search defaults: RunConfig
    space.py     what a sweep varies, and when (conditions, per-block parameters)
    spec.py      YAML -> Spec (validated whole, one-line errors); resolve(values) -> RunConfig

Every default lives in a record here. Nothing in this package imports Keras, the model
zoo or a search engine: reading a space file is instant and has no side effects.
"""

from search.config.records import (MAX_IMAGE_SIDE, METRICS, AirbenchRecipe, Augment, DataConfig, EarlyStopping,
                                   FolderSource, Objective,
                                   RunConfig, Schedule, SearchDefaults, SpaceFile, TrainConfig)
from search.config.spec import (Spec, check_sweep, config_dict, flatten, load_spec, parse_overrides, parse_yaml,
                                resolve, run_config_from_dict, set_path)

__all__ = ["MAX_IMAGE_SIDE", "METRICS", "AirbenchRecipe", "Augment", "DataConfig", "EarlyStopping", "FolderSource",
           "Objective", "RunConfig",
           "Schedule", "SearchDefaults", "SpaceFile", "Spec", "TrainConfig", "check_sweep", "config_dict", "flatten",
           "load_spec", "parse_overrides", "parse_yaml", "resolve", "run_config_from_dict", "set_path"]
