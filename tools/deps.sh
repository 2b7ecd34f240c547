# Sourced by tools/demo and tools/test: installs what a fresh Debian/Ubuntu
# machine lacks to build ppsched (C compiler, CMake, pkg-config, cJSON,
# Check, OpenBLAS, LAPACKE, OpenSSL's libcrypto). CUDA, NCCL and MPI are
# optional and never installed here.
pp_install_deps() {
    local missing=()
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    if command -v pkg-config >/dev/null 2>&1; then
        pkg-config --exists libcjson || missing+=(libcjson-dev)
        pkg-config --exists check || missing+=(check)
        pkg-config --exists openblas || missing+=(libopenblas-dev)
        pkg-config --exists lapacke || missing+=(liblapacke-dev)
        pkg-config --exists libcrypto || missing+=(libssl-dev)
    else
        missing+=(libcjson-dev check libopenblas-dev liblapacke-dev libssl-dev)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "ppsched: installing ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ppsched: error: missing ${missing[*]} and no apt-get to install them" >&2
        return 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}
