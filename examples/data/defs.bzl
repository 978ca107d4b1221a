def shard(name, index):
    """One shard of a synthetic data set: rows index*100 .. index*100+99, value = id squared mod 97."""
    genrule(
        name = name,
        outs = [name + ".csv"],
        cmd = "seq %d %d | awk '{ print $1 \",\" ($1 * $1) %% 97 }' > $(OUTS)" % (index * 100, index * 100 + 99),
    )
