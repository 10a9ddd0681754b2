#!/usr/bin/env python3
"""Generates apiserver/src/protobuf/schema.rs: the field table the protobuf decoder walks.

Inputs are the Kubernetes sources as git checkouts (bare repositories are fine):
  kubernetes/api, kubernetes/apimachinery, kubernetes/apiextensions-apiserver,
  kubernetes/kube-aggregator.
From each package's `generated.proto` it takes the messages, field numbers, wire types and
nested message types; from the same package's Go types (`*.go`) it takes, per message and
field number, the JSON name, `omitempty`/`omitzero`, whether the Go field is a pointer, and
whether an embedded struct is inlined (`json:""`). `doc.go`'s `+groupName=` (or register.go's
`GroupName`) maps API groups to packages.

Usage:
  python3 tools/protobuf-schema/generate.py API APIMACHINERY APIEXTENSIONS AGGREGATOR \
      > apiserver/src/protobuf/schema.rs
each argument a git directory (read with `git show REV:path`, REV defaults to HEAD).
"""
import re
import subprocess
import sys


def git(repo, *args):
    return subprocess.run(["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True).stdout


def ls(repo):
    return git(repo, "ls-tree", "-r", "--name-only", "HEAD").split("\n")


def show(repo, path):
    return git(repo, "show", "HEAD:" + path)


SCALARS = {"string", "bytes", "int32", "int64", "bool", "double"}
FIELD_RE = re.compile(r"^\s*(optional|repeated)\s+(\S+)\s+(\w+)\s*=\s*(\d+)\s*;")
MAP_RE = re.compile(r"^\s*map<\s*(\S+)\s*,\s*(\S+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")


def parse_proto(text):
    pkg = re.search(r"^package\s+([\w.]+)\s*;", text, re.M).group(1)
    msgs = {}
    cur = None
    nullable = False
    pending = []
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith("//"):
            pending.append(s)
            continue
        m = re.match(r"^message\s+(\w+)\s*\{", s)
        if m:
            cur = m.group(1)
            msgs[cur] = {"fields": [], "nullable": any("+protobuf.nullable=true" in c for c in pending)}
            pending = []
            continue
        pending = []
        if cur is None:
            continue
        if s == "}":
            cur = None
            continue
        m = MAP_RE.match(line)
        if m:
            k, v, name, tag = m.groups()
            assert k == "string", (pkg, cur, line)
            msgs[cur]["fields"].append({"label": "map", "type": qualify(pkg, v), "name": name, "tag": int(tag)})
            continue
        m = FIELD_RE.match(line)
        if m:
            label, t, name, tag = m.groups()
            msgs[cur]["fields"].append({"label": label, "type": qualify(pkg, t), "name": name, "tag": int(tag)})
    return pkg, msgs


def qualify(pkg, t):
    if t in SCALARS:
        return t
    if t.startswith("."):
        return t[1:]
    return pkg + "." + t


STRUCT_RE = re.compile(r"^type\s+(\w+)\s+struct\s*\{\s*$")


def parse_go(text):
    """Go struct name -> list of fields in declaration order."""
    out = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = STRUCT_RE.match(lines[i])
        if not m:
            i += 1
            continue
        name = m.group(1)
        fields = []
        depth = 1
        i += 1
        while i < len(lines) and depth > 0:
            line = lines[i]
            code = line.split("//", 1)[0] if "`" not in line else line
            s = code.strip()
            if s.startswith("//") or not s:
                i += 1
                continue
            if depth == 1 and s == "}":
                depth = 0
                break
            depth += s.count("{") - s.count("}")
            fm = re.match(r"^(?:(\w+)\s+)?(\S+)\s+`([^`]*)`", s)
            if fm and depth == 1:
                gname, gtype, tags = fm.groups()
                pm = re.search(r'protobuf:"(\w+),(\d+),', tags)
                jm = re.search(r'json:"([^"]*)"', tags)
                if pm:
                    jparts = (jm.group(1) if jm else "").split(",")
                    fields.append({
                        "tag": int(pm.group(2)),
                        "json": jparts[0],
                        "omitempty": "omitempty" in jparts[1:],
                        "omitzero": "omitzero" in jparts[1:],
                        "pointer": gtype.startswith("*"),
                        "embedded": gname is None,
                    })
            i += 1
        out[name] = fields
    return out


def collect(repo, prefix_to_pkg):
    files = ls(repo)
    dirs = sorted({f.rsplit("/", 1)[0] for f in files if f.endswith("/generated.proto")})
    result = []
    for d in dirs:
        if "testapigroup" in d or "/internal" in d:
            continue
        pkg, msgs = parse_proto(show(repo, d + "/generated.proto"))
        gostructs = {}
        group = None
        for f in files:
            if f.rsplit("/", 1)[0] != d or not f.endswith(".go"):
                continue
            base = f.rsplit("/", 1)[1]
            if base.endswith("_test.go") or base.startswith("zz_generated") or base == "generated.pb.go":
                continue
            text = show(repo, f)
            gm = re.search(r"^//\s*\+groupName=([\w.\-]*)", text, re.M) or \
                re.search(r'^const GroupName\s*=\s*"([^"]*)"', text, re.M)
            if gm:
                group = gm.group(1)
            gostructs.update(parse_go(text))
        result.append((d, pkg, msgs, gostructs, group))
    return result


# Messages whose JSON form is not an object with their fields.
SPECIAL = {
    "k8s.io.apimachinery.pkg.apis.meta.v1.Time": "Time",
    "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "k8s.io.apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "RawJson",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "k8s.io.apimachinery.pkg.api.resource.QuantityValue": "Quantity",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
}
for v in ("v1", "v1beta1"):
    p = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions." + v + "."
    SPECIAL[p + "JSON"] = "RawJson"
    SPECIAL[p + "JSONSchemaPropsOrArray"] = "SchemaOrArray"
    SPECIAL[p + "JSONSchemaPropsOrBool"] = "SchemaOrBool"
    SPECIAL[p + "JSONSchemaPropsOrStringArray"] = "SchemaOrStringArray"


def main():
    api, apimachinery, apiext, aggregator = sys.argv[1:5]
    pkgs = []
    for repo in (api, apimachinery, apiext, aggregator):
        pkgs.extend(collect(repo, None))
    messages = {}
    groups = []
    missing = []
    for d, pkg, msgs, gostructs, group in pkgs:
        version = d.rsplit("/", 1)[1]
        if group is not None and re.match(r"^v\d+((alpha|beta)\d+)?$", version):
            groups.append(((group + "/" if group else "") + version, pkg))
        for mname, m in msgs.items():
            full = pkg + "." + mname
            gfields = {f["tag"]: f for f in gostructs.get(mname, [])}
            order = {f["tag"]: i for i, f in enumerate(gostructs.get(mname, []))}
            fields = []
            for f in m["fields"]:
                g = gfields.get(f["tag"])
                if g is None:
                    if full not in SPECIAL and not m["nullable"]:
                        missing.append(full + "." + f["name"])
                    g = {"json": f["name"], "omitempty": True, "omitzero": False, "pointer": True, "embedded": False}
                inline = g["embedded"] and g["json"] == ""
                fields.append(dict(f, json=g["json"] or f["name"], omitempty=g["omitempty"], omitzero=g["omitzero"],
                                   pointer=g["pointer"], inline=inline, order=order.get(f["tag"], 10000 + f["tag"])))
            fields.sort(key=lambda f: f["order"])
            special = SPECIAL.get(full, "Items" if m["nullable"] else "Object")
            messages[full] = {"fields": fields, "special": special}
    names = sorted(messages)
    index = {n: i for i, n in enumerate(names)}
    out = []
    w = out.append
    w("// @generated by tools/protobuf-schema/generate.py from the Kubernetes sources")
    w("// (kubernetes/api, kubernetes/apimachinery, kubernetes/apiextensions-apiserver,")
    w("// kubernetes/kube-aggregator): every generated.proto message with, per field, the JSON")
    w("// name and omitempty/pointer/inline facts read from the Go struct tags. Do not edit.")
    w("// Sources:")
    for repo in (api, apimachinery, apiext, aggregator):
        name = repo.rstrip("/").split("/")[-2] if repo.rstrip("/").endswith("/repo") else repo
        w(f"//   {name} @ {git(repo, 'rev-parse', 'HEAD').strip()}")
    w("")
    w("use super::schema_types::{Card, Field, Msg, Special, Ty, INLINE, OMITEMPTY, OMITZERO, POINTER};")
    w("")
    w("pub(super) static MESSAGES: &[Msg] = &[")
    for n in names:
        m = messages[n]
        w(f'    Msg {{ name: "{n}", special: Special::{m["special"]}, fields: &[')
        for f in m["fields"]:
            t = f["type"]
            if t in SCALARS:
                ty = "Ty::" + {"string": "String", "bytes": "Bytes", "int32": "Int32", "int64": "Int64", "bool": "Bool", "double": "Double"}[t]
            else:
                if t not in index:
                    raise SystemExit(f"unknown message type {t} in {n}")
                ty = f"Ty::Msg({index[t]})"
            card = {"optional": "Card::One", "repeated": "Card::Repeated", "map": "Card::Map"}[f["label"]]
            flags = [x for x, on in (("OMITEMPTY", f["omitempty"]), ("OMITZERO", f["omitzero"]), ("POINTER", f["pointer"]), ("INLINE", f["inline"])) if on]
            w(f'        Field {{ tag: {f["tag"]}, json: "{f["json"]}", ty: {ty}, card: {card}, flags: {"|".join(flags) or "0"} }},')
        w("    ] },")
    w("];")
    w("")
    w("/// apiVersion (`group/version`, or `version` for the core group) → protobuf package.")
    w("pub(super) static GROUP_VERSIONS: &[(&str, &str)] = &[")
    for gv, pkg in sorted(groups):
        w(f'    ("{gv}", "{pkg}"),')
    w("];")
    print("\n".join(out))
    for x in missing:
        print("warning: no Go field for " + x, file=sys.stderr)


if __name__ == "__main__":
    main()
