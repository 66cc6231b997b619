"""Static checks of the C# client that need no .NET SDK.

Run by run-tests.sh with the generated code's directory as argument. Each check prints
PASS/FAIL with its reason; the exit code is the number of failures (capped at 1).
"""

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import tree_sitter
import tree_sitter_c_sharp

HERE = Path(__file__).resolve().parent.parent
GENERATED = Path(sys.argv[1])
PROJECTS = [HERE / "Tokenvend.Client", HERE / "Tokenvend.Client.Tests"]

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))


def preprocess(source):
    """Resolves #if/#else/#endif on single symbols, none of them defined, as csc does by default.

    tree-sitter cannot parse a directive inside a base list, which protoc's C# output has
    (`#if !GOOGLE_PROTOBUF_REFSTRUCT_COMPATIBILITY_MODE`). Dropped lines are blanked so that
    line numbers stay right.
    """
    out, active = [], [True]
    for line in source.splitlines():
        directive = re.match(r"\s*#\s*(if|else|endif)\b\s*(.*)", line)
        if not directive:
            out.append(line if all(active) else "")
            continue
        kind, condition = directive.group(1), directive.group(2).strip()
        if kind == "if":
            symbol = re.fullmatch(r"(!?)\s*([A-Za-z_]\w*)", condition)
            if not symbol:
                raise ValueError(f"unsupported #if {condition!r}")
            active.append(bool(symbol.group(1)))  # "!X" holds, "X" does not
        elif kind == "else":
            active[-1] = not active[-1]
        else:
            active.pop()
        out.append("")
    return "\n".join(out).encode()


def syntax_errors(parser, path):
    tree = parser.parse(preprocess(path.read_text()))
    errors = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            line, col = node.start_point
            errors.append(f"{path.name}:{line + 1}:{col + 1} {'missing ' + node.type if node.is_missing else 'unexpected ' + node.text[:40].decode(errors='replace')!r}")
        elif node.has_error:
            stack.extend(node.children)
    return errors


parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_c_sharp.language()))

# 1. Hand-written C# parses (syntax only: no types, overloads or references are resolved).
sources = sorted(p for project in PROJECTS for p in project.glob("*.cs"))
errors = [e for p in sources for e in syntax_errors(parser, p)]
check(f"hand-written C# parses ({len(sources)} files)", bool(sources) and not errors, "; ".join(errors[:10]))

# 2. protoc's C# output parses too, so the grammar accepts real generated code.
generated = sorted(GENERATED.rglob("*.cs"))
errors = [e for p in generated for e in syntax_errors(parser, p)]
check(f"generated C# parses ({len(generated)} files)", bool(generated) and not errors, "; ".join(errors[:10]))

# 3. The generated messages have the namespace, types and properties the client uses.
text = "\n".join(p.read_text() for p in generated)
expected = [
    r"namespace Tokenvend\.V1",
    r"public sealed partial class Token : pb::IMessage<Token>",
    r"public sealed partial class GetTokenRequest : pb::IMessage<GetTokenRequest>",
    r"public string AccessToken \{",
    r"public string TokenType \{",
    r"public global::Google\.Protobuf\.WellKnownTypes\.Timestamp ExpiresAt \{",
    r"public pbc::RepeatedField<string> Scopes \{",
    r"public pbc::MapField<string, string> Headers \{",
    r"public string Profile \{",
    r"public global::Google\.Protobuf\.WellKnownTypes\.Duration MinTtl \{",
    r"public string RejectedToken \{",
]
missing = [pattern for pattern in expected if not re.search(pattern, text)]
check("generated messages have what the client uses", not missing, ", ".join(missing))

# 4. The service stub, when this machine has Grpc's C# plugin (Debian does not package it).
stub = GENERATED / "TokenvendGrpc.cs"
if stub.exists():
    stub_text = stub.read_text()
    wanted = ["public static partial class TokenService", "public partial class TokenServiceClient",
              "GetTokenAsync(global::Tokenvend.V1.GetTokenRequest request, grpc::CallOptions options)"]
    absent = [w for w in wanted if w not in stub_text]
    check("generated TokenServiceClient has GetTokenAsync(request, CallOptions)", not absent, ", ".join(absent))
else:
    print("SKIP generated TokenServiceClient: no grpc_csharp_plugin here (Grpc.Tools generates it at build time)")

# 5. Project files are well-formed and every path they name exists.
problems = []
for project in [HERE / "Directory.Build.props", *(p / f"{p.name}.csproj" for p in PROJECTS)]:
    try:
        root = ET.parse(project).getroot()
    except (ET.ParseError, OSError) as e:
        problems.append(f"{project.name}: {e}")
        continue
    for item in root.iter():
        if item.tag in ("Protobuf", "ProjectReference"):
            target = (project.parent / item.get("Include")).resolve()
            if not target.exists():
                problems.append(f"{project.name}: {item.tag} {item.get('Include')} does not exist")
        if item.tag == "Protobuf" and not (project.parent / item.get("ProtoRoot", ".")).resolve().is_dir():
            problems.append(f"{project.name}: ProtoRoot {item.get('ProtoRoot')} is not a directory")
check("project files are well-formed XML and their paths exist", not problems, "; ".join(problems))

# 6. Every conformance scenario (client/README.md) has an xUnit test named Conformance_<id>.
CONFORMANCE_IDS = [
    "cache_hit_no_rpc", "single_flight", "reject_coalesced", "http_401_retried_once",
    "always_401_bounded", "deadline_bounds_fetch", "error_categories", "refresh_margin_fraction",
    "watch_live_copy", "stale_copy_while_unreachable", "service_account_token",
]
readme = HERE.parent / "README.md"
if readme.exists() and "## Conformance scenarios" in readme.read_text():
    section = readme.read_text().split("## Conformance scenarios", 1)[1]
    CONFORMANCE_IDS = re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M) or CONFORMANCE_IDS


def methods(path):
    """(name, attribute names) of every method declared in a file."""
    tree = parser.parse(preprocess(path.read_text()))
    found, stack = [], [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "method_declaration":
            name = node.child_by_field_name("name").text.decode()
            attributes = [a.text.decode() for child in node.children if child.type == "attribute_list"
                          for a in child.children if a.type == "attribute"]
            found.append((name, attributes))
        stack.extend(node.children)
    return found


tests = HERE / "Tokenvend.Client.Tests"
facts = {name for p in tests.glob("*.cs") for name, attrs in methods(p)
         if any(a.split("(")[0] in ("Fact", "SkippableFact") for a in attrs)}
absent = [i for i in CONFORMANCE_IDS if f"Conformance_{i}" not in facts]
check(f"every conformance scenario is a [Fact] named Conformance_<id> ({len(CONFORMANCE_IDS)} ids)",
      not absent, ", ".join(absent))

# 7. The one vocabulary: the public names every tokenvend client shares.
library = HERE / "Tokenvend.Client"
lib_text = {p.name: p.read_text() for p in library.glob("*.cs")}
declared = {name for p in library.glob("*.cs") for name, _ in methods(p)}
vocabulary = {
    "class Token": re.search(r"public sealed class Token\b", lib_text.get("Token.cs", "")),
    "TokenClient": re.search(r"public sealed class TokenClient\b", lib_text.get("TokenClient.cs", "")),
    "GetTokenAsync": "GetTokenAsync" in declared,
    "RejectAsync": "RejectAsync" in declared,
    "Watch": "Watch" in declared,
    "MaxRefreshMargin": re.search(r"public TimeSpan MaxRefreshMargin \{ get; set; \} = TimeSpan\.FromSeconds\(60\)",
                                  lib_text.get("TokenClientOptions.cs", "")),
    "CallTimeout 10 s": re.search(r"public TimeSpan CallTimeout \{ get; set; \} = TimeSpan\.FromSeconds\(10\)",
                                  lib_text.get("TokenClientOptions.cs", "")),
    "TokenvendException : HttpRequestException": re.search(
        r"public sealed class TokenvendException : HttpRequestException", lib_text.get("TokenvendException.cs", "")),
}
check("the shared vocabulary is declared", all(vocabulary.values()),
      ", ".join(k for k, v in vocabulary.items() if not v))

# 8. The old name is gone from code (a doc comment may mention it), and the generated
#    message, which shares the name Token, is always written out in full.
code_lines = [(p.name, n + 1, line) for p in [*library.glob("*.cs"), *tests.glob("*.cs")]
              for n, line in enumerate(p.read_text().splitlines()) if not line.lstrip().startswith("//")]
old = [f"{f}:{n}" for f, n, line in code_lines if re.search(r"\bVendedToken\b", line)]
check("no VendedToken left in code", not old, ", ".join(old))
bare = [f"{f}:{n}" for f, n, line in code_lines
        if re.search(r"(?<!global::Tokenvend\.)\bV1\.Token\b(?!Request|Service)", line)]
check("the generated Tokenvend.V1.Token is referred to as global::Tokenvend.V1.Token", not bare, ", ".join(bare))

# 9. The package metadata nuget.org shows.
project = ET.parse(library / "Tokenvend.Client.csproj").getroot()
props = {e.tag: (e.text or "").strip() for group in project.iter("PropertyGroup") for e in group}
want = {
    "PackageId": "Tokenvend.Client",
    "Version": "0.1.0",
    "Description": "Client for tokenvend, a gRPC OAuth 2.0 token vending service",
    "PackageLicenseExpression": "Apache-2.0",
    "RepositoryUrl": "https://github.com/tokenvend/tokenvend",
    "PackageProjectUrl": "https://github.com/tokenvend/tokenvend",
    "PackageReadmeFile": "README.md",
}
wrong = [f"{k}={props.get(k)!r}" for k, v in want.items() if props.get(k) != v]
if not props.get("Authors"):
    wrong.append("Authors missing")
if set(props.get("PackageTags", "").split(";")) != {"oauth2", "token", "grpc", "tokenvend"}:
    wrong.append(f"PackageTags={props.get('PackageTags')!r}")
packed = [e for e in project.iter("None") if e.get("Pack") == "true" and e.get("Include", "").endswith("README.md")]
if not packed or not (library / packed[0].get("Include")).resolve().exists():
    wrong.append("README.md is not packed, or does not exist")
check("the csproj has the NuGet package metadata", not wrong, "; ".join(wrong))

passed = sum(results)
failed = len(results) - passed
print(f"static-checks: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
