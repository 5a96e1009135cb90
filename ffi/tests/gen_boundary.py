#!/usr/bin/env python3
"""Writes the C API's boundary tests, generated from the header so that no function is missed.

    python3 ffi/tests/gen_boundary.py ffi/include/kilotune.h > boundary.c

For every function the header declares, the generated program checks:

- NULL, one pointer argument at a time (every other argument valid): a function that returns a
  kt_status must return KT_ERR_NULL_ARGUMENT and leave its out-parameters alone, unless the
  argument's documentation allows NULL; a `_free` function must treat NULL as a no-op.
- A forced panic (the library built with the `fault-injection` feature, whose
  `kt_test_force_panics` makes every boundary panic): a kt_status function must return
  KT_ERR_PANIC and leave its out-parameters alone; a function that returns a value must return
  its fallback (never NULL for a string); every one must leave "kilotune panicked" as the
  thread's last error; and the process must not abort, unwind into C or leak (the program runs
  under AddressSanitizer).

A function whose argument type this script has no valid value for stops the generation with an
error, so a new function in the header cannot go untested: add its type to VALUES.
"""

import re
import sys

# A valid value for each argument, by (type, name) and then by type. `out_*` names are
# out-parameters whose value is checked to be untouched after a failed call.
VALUES_BY_NAME = {
    ("const char *", "path"): "path_for_{fn}",
    ("size_t", "len"): "sizeof small_bytes",
    ("size_t", "index"): "0",
    ("size_t", "count"): "1",
}
VALUES = {
    "const uint8_t *": "small_bytes",
    "uint32_t": "0",
    "kt_status": "0",
    "const struct kt_base *": "base",
    "struct kt_base *": "base",
    "struct kt_base **": "&out_base",
    "const struct kt_delta *": "delta",
    "struct kt_delta *": "delta",
    "struct kt_delta **": "&out_delta",
    "const struct kt_session *": "session",
    "struct kt_session *": "session",
    "struct kt_session **": "&out_session",
    "const struct kt_outputs *": "outputs",
    "struct kt_outputs *": "outputs",
    "struct kt_outputs **": "&out_outputs",
    "const struct kt_trainer *": "trainer",
    "struct kt_trainer *": "trainer",
    "struct kt_trainer **": "&out_trainer",
    "const struct kt_train_config *": "&config",
    "const struct kt_tokens *": "&batch.tokens",
    "const struct kt_batch *": "&batch",
    "uint8_t *": "out_bytes",
    "uint64_t *": "&out_u64",
    "size_t *": "&out_size",
    "struct kt_output *": "&out_output",
    "struct kt_step_report *": "&out_report",
    "struct kt_evaluation *": "&out_evaluation",
}
# Out-parameter variables: how to reset them to a sentinel, and how to check they kept it.
OUTS = {
    "&out_base": ("out_base = (kt_base *)SENTINEL;", "out_base == (kt_base *)SENTINEL"),
    "&out_delta": ("out_delta = (kt_delta *)SENTINEL;", "out_delta == (kt_delta *)SENTINEL"),
    "&out_session": ("out_session = (kt_session *)SENTINEL;", "out_session == (kt_session *)SENTINEL"),
    "&out_outputs": ("out_outputs = (kt_outputs *)SENTINEL;", "out_outputs == (kt_outputs *)SENTINEL"),
    "&out_trainer": ("out_trainer = (kt_trainer *)SENTINEL;", "out_trainer == (kt_trainer *)SENTINEL"),
    "out_bytes": ("memset(out_bytes, 0xA5, sizeof out_bytes);", "out_bytes[0] == 0xA5 && out_bytes[31] == 0xA5"),
    "&out_u64": ("out_u64 = 0xA5A5;", "out_u64 == 0xA5A5"),
    "&out_size": ("out_size = 0xA5A5;", "out_size == 0xA5A5"),
    "&out_output": ("memset(&out_output, 0xA5, sizeof out_output);", "((unsigned char *)&out_output)[0] == 0xA5"),
    "&out_report": ("memset(&out_report, 0xA5, sizeof out_report);", "((unsigned char *)&out_report)[0] == 0xA5"),
    "&out_evaluation": ("memset(&out_evaluation, 0xA5, sizeof out_evaluation);", "((unsigned char *)&out_evaluation)[0] == 0xA5"),
}

# How to free what a successful call wrote into a handle out-parameter.
FREES = {
    "&out_base": "kt_base_free(out_base);",
    "&out_delta": "kt_delta_free(out_delta);",
    "&out_session": "kt_session_free(out_session);",
    "&out_outputs": "kt_outputs_free(out_outputs);",
    "&out_trainer": "kt_trainer_free(out_trainer);",
}

DECL = re.compile(r"^([A-Za-z_][\w\s\*]*?[\s\*])(kt_\w+)\((.*)\);$")


def parse(header):
    """(return type, name, [(type, name)], doc) for each function, in header order."""
    text = open(header, encoding="utf-8").read()
    functions = []
    doc = ""
    for block in re.split(r"\n(?=/\*\*|\w)", text):
        block = block.strip()
        documented = block.startswith("/**")
        if documented:
            end = block.find("*/")
            doc = block[: end + 2]
            block = block[end + 2 :].strip()
        m = DECL.match(block.split("\n", 1)[0])
        if m:
            ret, name, args = m.group(1).strip(), m.group(2), m.group(3).strip()
            params = []
            if args != "void":
                for a in args.split(","):
                    a = a.strip()
                    pm = re.match(r"^(.*?[\s\*])(\w+)$", a)
                    if not pm:
                        sys.exit(f"error: cannot read argument `{a}` of {name}")
                    params.append((" ".join(pm.group(1).replace("*", " * ").split()).replace("* *", "**"), pm.group(2)))
            functions.append((ret, name, params, doc))
        if not documented or m:
            doc = ""
    return functions


def value(fn, ty, name):
    v = VALUES_BY_NAME.get((ty, name)) or VALUES.get(ty)
    if v is None:
        sys.exit(f"error: no valid value for argument `{ty} {name}` of {fn}: add it to VALUES in {sys.argv[0]}")
    return v.format(fn=fn), ty


def null_allowed(doc, name):
    """Whether the documentation lets `name` be NULL."""
    flat = " ".join(doc.replace("*", " ").split())
    return bool(re.search(rf"`{name}` (must be )?NULL or|`{name}` NULL or|\({name} may be NULL\)|NULL is a no-op", flat)) or (
        name == "delta" and "NULL: the plain base" in flat
    )


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_boundary.py HEADER > boundary.c")
    functions = parse(sys.argv[1])
    # Every line that declares a function must have been read, or a function would go untested.
    declared = [l for l in open(sys.argv[1], encoding="utf-8") if re.match(r"^[A-Za-z].*\bkt_\w+\(.*\);$", l)]
    if len(functions) != len(declared) or len(functions) < 10:
        sys.exit(f"error: read {len(functions)} functions from {sys.argv[1]}, which declares {len(declared)}")
    out = []
    w = out.append
    w("/* Generated by ffi/tests/gen_boundary.py from the header: the NULL-argument and forced-panic")
    w(" * checks of every exported function. Do not edit; regenerate. */")
    w('#include "check.h"')
    w("")
    w("#define SENTINEL ((uintptr_t)0x10)")
    w("void kt_test_force_panics(uint32_t on); /* the fault-injection build's hook */")
    w("")
    w("static int panicked(void) { return strstr(kt_last_error_message(), \"kilotune panicked\") != NULL; }")
    w("")
    w("int main(int argc, char **argv) {")
    w("    if (argc != 3) { fprintf(stderr, \"usage: %s FIXTURES_DIR SCRATCH_DIR\\n\", argv[0]); return 2; }")
    w("    char model[4096], delta_file[4096];")
    w("    snprintf(model, sizeof model, \"%s/tiny-bert.dynamo.onnx\", argv[1]);")
    w("    snprintf(delta_file, sizeof delta_file, \"%s/boundary.ktd\", argv[2]);")
    w("    static const uint8_t small_bytes[4] = {8, 7, 18, 0};")
    w("    /* Real handles, so that the one NULL argument is the only thing wrong with a call. */")
    w("    kt_base *base = NULL; kt_trainer *trainer = NULL; kt_delta *delta = NULL;")
    w("    kt_session *session = NULL; kt_outputs *outputs = NULL;")
    w("    OK(kt_base_load(model, KT_WEIGHTS_AS_SHIPPED, &base));")
    w("    kt_train_config config = kt_train_config_default();")
    w("    config.threads = 1;")
    w("    OK(kt_trainer_new(base, &config, &trainer));")
    w("    toy_batch data; toy_data(&data, 1, 5);")
    w("    kt_batch batch = as_batch(&data);")
    w("    kt_step_report step;")
    w("    OK(kt_trainer_step(trainer, &batch, &step));")
    w("    OK(kt_trainer_delta(trainer, &delta));")
    w("    OK(kt_delta_save(delta, delta_file, KT_PRECISION_F32));")
    w("    OK(kt_session_new(base, delta, 1, &session));")
    w("    OK(kt_session_run(session, &batch.tokens, &outputs));")
    w("    if (checks_failed) return report(\"boundary (setup)\");")
    w("    kt_base *out_base; kt_delta *out_delta; kt_session *out_session; kt_outputs *out_outputs; kt_trainer *out_trainer;")
    w("    uint8_t out_bytes[32]; uint64_t out_u64; size_t out_size; kt_output out_output;")
    w("    kt_step_report out_report; kt_evaluation out_evaluation;")
    w("    int null_cases = 0, panic_cases = 0;")
    w("")
    for ret, name, params, doc in functions:
        paths = {"path_for_" + name: "delta_file" if "delta" in name else "model"}
        vals = []
        for ty, pname in params:
            v, norm = value(name, ty, pname)
            vals.append((norm, pname, paths.get(v, v)))
        outs = [v for _, _, v in vals if v in OUTS]
        reset = " ".join(OUTS[v][0] for v in outs)
        kept = " && ".join(OUTS[v][1] for v in outs) or "1"
        is_status = ret == "kt_status"
        is_free = name.endswith("_free")
        # NULL, one pointer at a time.
        for i, (ty, pname, _) in enumerate(vals):
            if "*" not in ty:
                continue
            args = ", ".join("NULL" if j == i else v for j, (_, _, v) in enumerate(vals))
            w(f"    /* {name}: `{pname}` NULL */")
            if is_free:
                w(f"    {name}({args}); null_cases++;")
            elif is_status and not null_allowed(doc, pname):
                if reset:
                    w(f"    {reset}")
                w(f"    CHECK({name}({args}) == KT_ERR_NULL_ARGUMENT); null_cases++;")
                w(f"    CHECK({kept});")
                w(f"    CHECK(strstr(kt_last_error_message(), \"{pname}\") != NULL);")
            elif is_status:
                w("    /* (NULL is documented as allowed here: the call succeeds) */")
                w(f"    OK({name}({args})); null_cases++;")
                for v in outs:
                    if v in FREES:
                        w(f"    {FREES[v]}")
        # A forced panic, every argument valid.
        args = ", ".join(v for _, _, v in vals)
        w(f"    /* {name}: forced panic */")
        if reset:
            w(f"    {reset}")
        w("    kt_test_force_panics(1);")
        if is_status:
            w(f"    {{ kt_status st_ = {name}({args});")
            w("      kt_test_force_panics(0);")
            w(f"      CHECK(st_ == KT_ERR_PANIC); }}")
            w(f"    CHECK({kept});")
        elif ret == "void":
            w(f"    {name}({args});")
            w("    kt_test_force_panics(0);")
        elif ret == "const char *":
            w(f"    {{ const char *s_ = {name}({args});")
            w("      kt_test_force_panics(0);")
            w("      CHECK(s_ != NULL); }")
        else:
            w(f"    {{ {ret} v_ = {name}({args}); (void)v_;")
            w("      kt_test_force_panics(0); }")
        w(f"    CHECK(panicked()); panic_cases++;")
        w("")
    w("    /* Everything still works after the panics: the handles were left as they were. */")
    w("    static float values[ROWS * SEQ * 64];")
    w("    CHECK(first_output(session, &batch.tokens, values, sizeof values / sizeof values[0]) > 0);")
    w("    kt_outputs_free(outputs); kt_session_free(session); kt_delta_free(delta);")
    w("    kt_trainer_free(trainer); kt_base_free(base);")
    w(f"    printf(\"{len(functions)} functions: %d NULL-argument cases, %d forced panics\\n\", null_cases, panic_cases);")
    w("    return report(\"boundary\");")
    w("}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
