"""The YAML loader for what hb reads from outside (lock files, environment.yml, recipes, channel
lists): libyaml's safe loader where PyYAML has it (it bounds nesting; the pure-Python composer recurses
once per level into a RecursionError, which callers still catch), else PyYAML's safe loader. PyYAML is
imported when first needed: most builds read no YAML."""


def safe_loader():
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)
