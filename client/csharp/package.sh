#!/usr/bin/env bash
# Builds the NuGet package Tokenvend.Client 0.1.0 (.nupkg and .snupkg) into OUTDIR.
#
#   client/csharp/package.sh OUTDIR
#
# Needs a .NET 8 SDK. Without one (this project's CI machine kind cannot install it) it prints
# a SKIP line and exits 0: nothing is built, and nothing here claims otherwise.
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

if ! command -v dotnet >/dev/null 2>&1 || [[ -z "$(dotnet --list-sdks 2>/dev/null)" ]]; then
  echo "SKIP csharp package: no .NET SDK on PATH; Tokenvend.Client.nupkg is NOT built"
  exit 0
fi
dotnet pack "$here/Tokenvend.Client" --nologo -c Release --include-symbols -p:SymbolPackageFormat=snupkg -o "$out"
nupkg="$out/Tokenvend.Client.0.1.0.nupkg"
[[ -f "$nupkg" ]] || { echo "package.sh: $nupkg was not built" >&2; exit 1; }
# The metadata nuget.org shows, checked in the package itself rather than the csproj.
nuspec=$(unzip -p "$nupkg" Tokenvend.Client.nuspec)
for want in '<license type="expression">Apache-2.0</license>' '<readme>README.md</readme>' \
  'https://github.com/tokenvend/tokenvend' '<tags>oauth2 token grpc tokenvend</tags>'; do
  grep -qF "$want" <<<"$nuspec" || { echo "package.sh: the nuspec lacks $want" >&2; exit 1; }
done
unzip -l "$nupkg" README.md >/dev/null || { echo "package.sh: README.md missing from $nupkg" >&2; exit 1; }
echo "csharp: $nupkg"
