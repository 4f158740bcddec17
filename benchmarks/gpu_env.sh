# Sourced by the GPU scripts: make robustit runnable on a GPU machine that lacks its extra
# dependencies. $CARRY (default .devcarry) may hold site.tar.xz (kornia, kornia_rs, pycocotools,
# pycocoevalcap without METEOR's and SPICE's data: wheels for that machine's Python), jre.tar.xz
# (a `jlink` Java runtime for the PTB tokenizer) and cache/attacks/ (learned triggers from
# ~/.cache/robustit, so SSBA and VL-Trojan reuse them). Sets $py and $tmp.
carry=${CARRY:-.devcarry}
tmp=${TMPDIR:-/tmp}/robustit-gpu
mkdir -p "$tmp"
for t in site jre; do
  [ -f "$carry/$t.tar.xz" ] && tar -xJf "$carry/$t.tar.xz" -C "$tmp"
done
[ -d "$tmp/site" ] && export PYTHONPATH="$tmp/site:$PWD"
[ -d "$tmp/jre" ] && export PATH="$tmp/jre/bin:$PATH"
[ -d "$carry/cache" ] && export ROBUSTIT_CACHE="$PWD/$carry/cache"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
