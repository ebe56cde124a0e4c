"""evaclip.data: training data (webdataset shards, CSV, caption folders) mixed, batched and exactly resumable.

    from evaclip.data import DataConfig, DataSource, make_loader
    cfg = DataConfig(sources=[DataSource("/data/laion/{00000..23295}.tar", 1.6, "laion2b"),
                              DataSource("/data/coyo/{00000..08000}.tar", 0.4, "coyo700m")], batch_size=256)
    loader = make_loader(cfg, rank, world_size, transform=preprocess_train, tokenizer=tokenizer)
    for images, tokens, info in loader: ...          # info["skips"]: reason -> count for this batch
    state = loader.state_dict(); loader.load_state_dict(state)   # exact resume, one state per rank
"""
from evaclip.data.config import DataConfig, DataSource, parse_sources
from evaclip.data.decode import SKIP_REASONS
from evaclip.data.shards import expand_urls

__all__ = ["DataConfig", "DataSource", "parse_sources", "make_loader", "TrainLoader", "global_skip_counts",
           "SKIP_REASONS", "expand_urls"]


def __getattr__(name):
    # Lazy: the pipeline imports torch, which the shard tools and the demo data builder do not need.
    if name in ("make_loader", "TrainLoader", "global_skip_counts"):
        from evaclip.data import pipeline
        return getattr(pipeline, name)
    raise AttributeError(f"module 'evaclip.data' has no attribute {name!r}")
