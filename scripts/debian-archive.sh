# Sourced by the scripts that fetch Debian packages for the tests (never run on its own):
#   debian_archive_uri [SUITE]   the URI the host's apt sources give for SUITE (default: the
#                                host's codename), e.g. the main archive for "bookworm" and the
#                                security archive for "bookworm-security";
#   debian_apt_init DIR LINES    a private apt configuration under DIR/apt whose sources list is
#                                LINES (one-line form), then its "apt-get update"; sets the
#                                array apt_opts for later apt-get calls;
#   debian_download DIR PKG...   apt-get download of PKG... into DIR (the newest version the
#                                private sources have), with retries;
#   debian_unpack_dir DIR        makes DIR (absolute in $dir) and serialises runs for it; when
#                                an earlier run completed it, prints its version and exits.
# The host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list one-line form and
# *.sources deb822 form) name the archive, so the repository names no archive host; the host's
# own apt configuration, lists and packages are never changed.

# The codename of the host's release (bookworm).
debian_codename() {
  (. /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}")
}

# Prints "URI SUITE" for every enabled "deb" source of the host, one per suite
# ($DEBIAN_ARCHIVE_APT_ETC instead of /etc/apt, for a check of this parser).
debian_host_sources() {
  local f etc=${DEBIAN_ARCHIVE_APT_ETC:-/etc/apt}
  if [ -f "$etc/sources.list" ]; then
    # One-line form: deb [options] URI SUITE COMPONENT...
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$etc/sources.list" |
      awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  fi
  for f in "$etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && NF >= 3 { print $2, $3 }'
  done
  for f in "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: stanzas separated by blank lines; fields Types, URIs, Suites, Enabled (a field
    # may continue on lines starting with a blank).
    awk '
      function flush(   i, j, nu, ns, u, s) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
          nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) if (u[i] != "" && s[j] != "") print u[i], s[j]
        }
        types = uris = suites = enabled = ""; field = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (field == "uris") uris = uris " " $0; else if (field == "suites") suites = suites " " $0; next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        field = key
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = val
      }
      END { flush() }
    ' "$f"
  done
}

# debian_archive_uri [SUITE]: the first URI of the host's sources that serves SUITE.
debian_archive_uri() {
  local suite=${1:-$(debian_codename)} uri
  uri=$(debian_host_sources | awk -v s="$suite" '$2 == s { print $1; exit }')
  if [ -z "$uri" ]; then
    echo "debian-archive: no apt source of this host serves suite $suite (looked in ${DEBIAN_ARCHIVE_APT_ETC:-/etc/apt}/sources.list and sources.list.d/)" >&2
    return 1
  fi
  echo "${uri%/}"
}

# debian_apt_init DIR LINES: a private apt configuration under DIR/apt with LINES as its
# sources list; runs its update (3 tries).
debian_apt_init() {
  local dir=$1 lines=$2 try
  mkdir -p "$dir/apt/lists/partial" "$dir/apt/cache/archives/partial" "$dir/apt/preferences.d"
  printf '%s\n' "$lines" >"$dir/apt/sources.list"
  apt_opts=(
    -o "Dir::Etc::SourceList=$dir/apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=$dir/apt/preferences.d"
    -o "Dir::State::Lists=$dir/apt/lists"
    -o "Dir::Cache=$dir/apt/cache"
    -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root"
    -o "Acquire::Retries=3"
  )
  for try in 1 2 3; do
    if apt-get "${apt_opts[@]}" -qq update >&2; then
      return 0
    fi
    echo "debian-archive: apt-get update failed (try $try of 3)" >&2
    sleep $((try * 5))
  done
  return 1
}

# debian_download DIR PKG...: downloads PKG... into DIR with the configuration of
# debian_apt_init (3 tries).
debian_download() {
  local dir=$1 try
  shift
  for try in 1 2 3; do
    if (cd "$dir" && apt-get "${apt_opts[@]}" -qq download "$@" >&2); then
      return 0
    fi
    echo "debian-archive: apt-get download failed (try $try of 3)" >&2
    sleep $((try * 5))
  done
  return 1
}

# debian_unpack_dir DIR: makes DIR and sets $dir to its absolute path; runs for one DIR are
# serialised (flock on fd 9, held until the script exits). When an earlier run completed it
# (DIR/ready and DIR/root), prints DIR/ready (the version) and exits the script: a second run
# needs no network.
debian_unpack_dir() {
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  exec 9>"$dir/.lock"
  flock 9
  if [ -f "$dir/ready" ] && [ -d "$dir/root" ]; then
    cat "$dir/ready"
    exit 0
  fi
}
