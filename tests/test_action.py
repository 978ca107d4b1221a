from hermetic_build.action import Action, File, action_key, key_fields, make_params_json
from hermetic_build.digest import canonical_json, digest_bytes
from hermetic_build.label import Label


def _action(**overrides):
    base = dict(owner=Label("p", "x"), mnemonic="Genrule", kind="shell", version="1",
                inputs=(File("p/a.txt"),), outputs=(File("hb-out/p/x/o", Label("p", "x")),),
                params_json=make_params_json({"cmd": "cp a o"}), platform="linux-64",
                env_allowlist=("HTTP_PROXY",), description="Genrule //p:x")
    base.update(overrides)
    return Action(**base)


INPUTS = {"p/a.txt": digest_bytes(b"a")}


def test_golden_key():
    """Changing the encoding changes every key in every cache: it must be deliberate (bump KEY_SCHEMA)."""
    fields = key_fields(_action(), INPUTS, {"HTTP_PROXY": "http://proxy"})
    assert canonical_json(fields) == (
        b'{"env":{"HTTP_PROXY":"http://proxy"},"inputs":{"p/a.txt":"' + str(INPUTS["p/a.txt"]).encode()
        + b'"},"kind":"shell@1","mnemonic":"Genrule","outputs":["file:hb-out/p/x/o"],'
        b'"params":{"cmd":"cp a o"},"platform":"linux-64","schema":"hb-action-key/1"}'
    )
    assert action_key(fields) == "21ad01e31ea9a9adb327ef3b9be92fa33519084207e4fb38f372047aa35a5f55"


def test_description_is_not_part_of_key():
    a = key_fields(_action(), INPUTS, {})
    b = key_fields(_action(description="something else"), INPUTS, {})
    assert action_key(a) == action_key(b)


def test_each_field_changes_the_key():
    base = action_key(key_fields(_action(), INPUTS, {}))
    variants = [
        key_fields(_action(mnemonic="Other"), INPUTS, {}),
        key_fields(_action(version="2"), INPUTS, {}),
        key_fields(_action(params_json=make_params_json({"cmd": "cp a  o"})), INPUTS, {}),
        key_fields(_action(platform="osx-arm64"), INPUTS, {}),
        key_fields(_action(outputs=(File("hb-out/p/x/o2", Label("p", "x")),)), INPUTS, {}),
        key_fields(_action(), {"p/a.txt": digest_bytes(b"b")}, {}),
        key_fields(_action(), INPUTS, {"HTTP_PROXY": "x"}),
    ]
    keys = {action_key(v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_env_outside_allowlist_is_ignored():
    assert key_fields(_action(), INPUTS, {"HOME": "/root"})["env"] == {"HTTP_PROXY": ""}


def test_file_short_path():
    assert File("hb-out/p/x/sub/o", Label("p", "x")).short_path() == "sub/o"
    assert File("p/a.txt").short_path() == "p/a.txt" and File("p/a.txt").is_source


def test_upstream_keys_are_in_the_key_only_of_actions_that_ask_for_them():
    """dep_keys=True: the keys of the actions upstream become a key field (so the key follows them); an
    action that does not ask keeps its key (no cache of other actions is invalidated)."""
    upstream = [{"owner": "//p:y", "mnemonic": "Fetch", "output": "hb-out/p/y/f", "key": "1" * 64}]
    plain = key_fields(_action(), INPUTS, {}, upstream)
    assert "dep_keys" not in plain and action_key(plain) == action_key(key_fields(_action(), INPUTS, {}))
    asking = _action(dep_keys=True)
    one = key_fields(asking, INPUTS, {}, upstream)
    assert one["dep_keys"] == upstream
    other = key_fields(asking, INPUTS, {}, [dict(upstream[0], key="2" * 64)])
    assert action_key(one) != action_key(other) != action_key(plain)


def test_explain_names_changed_upstream_keys():
    from hermetic_build.explain import _diff

    asking = _action(dep_keys=True)
    before = {"fields": key_fields(asking, INPUTS, {}, [{"owner": "//p:y", "mnemonic": "Fetch", "output": "o",
                                                          "key": "1" * 64}])}
    after = key_fields(asking, INPUTS, {}, [{"owner": "//p:y", "mnemonic": "Fetch", "output": "o", "key": "2" * 64}])
    assert _diff(before, after) == ["the keys of 1 upstream actions changed (first: Fetch //p:y)"]
    assert _diff(before, before["fields"]) == []
