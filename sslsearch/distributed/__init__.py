"""Scale-out: Ray Data extraction (ray_embed), shard blocks (blocks), store locations on pyarrow filesystems (location)."""
