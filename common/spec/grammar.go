package spec

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// The grammars below are the one place that decides which strings may reach
// nginx, Docker or a probe. Each Check function returns nil or an error that
// says what is allowed; the caller adds the field path.

var (
	dnsLabel   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	hostLabel  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$`)
	pathRe     = regexp.MustCompile(`^/[A-Za-z0-9\-._~%!&*+,=:@/]*$`)
	headerName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]*$`)
	envName    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	filePathRe = regexp.MustCompile(`^/[A-Za-z0-9._+@/-]*$`)
	httpMethod = regexp.MustCompile(`^[A-Z]+$`)
	// hashVar is one variable of a hash_key expression.
	hashVar = regexp.MustCompile(`\$(remote_addr|binary_remote_addr|request_uri|uri|host|http_host|scheme|args|server_name|(http|cookie|arg)_[a-z0-9_]+)`)
)

// Length limits of strings that reach nginx, Docker or a probe.
const (
	MaxNameLen = 63
	MaxHostLen = 253
	// MaxExactHostLen caps a host name without a wildcard: nginx keeps
	// exact server names in a hash whose buckets the rendered config sizes
	// at 128 bytes (server_names_hash_bucket_size), and one name takes
	// 8 + its length + 2, rounded up to 8, plus an 8-byte terminator. A
	// longer name makes nginx -t refuse the whole config.
	MaxExactHostLen   = 110
	MaxPathLen        = 1024
	MaxHeaderNameLen  = 128
	MaxHeaderValueLen = 4096
	MaxFilePathLen    = 4096
	MaxEnvNameLen     = 256
	MaxHashKeyLen     = 256
	MaxProbeDataLen   = 4096
)

// Signals an app may ask to be stopped with.
var Signals = []string{"SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGKILL"}

// HTTPMethods a health check may use.
var HTTPMethods = []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

// NginxUnsafe is every character that no string rendered into nginx config
// may hold, beyond control characters: it would end a directive, open or
// close a block, start a comment, or open or close a quoted string.
const NginxUnsafe = ";{}#\"'\\`"

// NginxSafe reports whether s holds no character of NginxUnsafe, no
// whitespace other than a plain space, and no control character.
func NginxSafe(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r > 0x7f && r < 0xa0) || strings.ContainsRune(NginxUnsafe, r) {
			return false
		}
		if r > 0x7f { // nothing outside ASCII reaches nginx
			return false
		}
	}
	return true
}

// CheckName checks an app name: a DNS label.
func CheckName(s string) error {
	if len(s) == 0 || len(s) > MaxNameLen || !dnsLabel.MatchString(s) {
		return fmt.Errorf("%q is not a valid name (a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit, at most %d characters)", s, MaxNameLen)
	}
	return nil
}

// CheckHost checks a host name per RFC 1123, with an optional leading "*.";
// a name without the wildcard is at most MaxExactHostLen characters.
func CheckHost(s string) error {
	h := strings.TrimPrefix(s, "*.")
	if h == s && len(s) > MaxExactHostLen {
		return fmt.Errorf("%q has %d characters: a host name without a wildcard has at most %d (what nginx's server name hash buckets hold)", s, len(s), MaxExactHostLen)
	}
	ok := len(h) > 0 && len(s) <= MaxHostLen
	for rest := h; ok && rest != ""; {
		label, after, _ := strings.Cut(rest, ".")
		ok = len(label) <= 63 && hostLabel.MatchString(label) && !(after == "" && strings.HasSuffix(rest, "."))
		rest = after
	}
	if !ok {
		return fmt.Errorf("%q is not a valid host name (RFC 1123 labels of letters, digits and '-' joined by '.', optionally starting with \"*.\", at most %d characters)", s, MaxHostLen)
	}
	return nil
}

// CheckPath checks a routing path: it starts with '/' and holds only URL
// path characters, with no whitespace, quotes, ';', '{', '}', '#', '$', '?'
// or control characters.
func CheckPath(s string) error {
	if len(s) > MaxPathLen || !pathRe.MatchString(s) {
		return fmt.Errorf("%q is not a valid path (starts with '/', then letters, digits and - . _ ~ %% ! & * + , = : @ /, at most %d characters)", s, MaxPathLen)
	}
	if strings.Contains(s, "/../") || strings.HasSuffix(s, "/..") || strings.Contains(s, "//") {
		return fmt.Errorf("%q is not a clean path (no \"..\" segments or \"//\")", s)
	}
	return nil
}

// ClaimsBefore reports whether app a claimed its routes before app b: the
// one created first, an app whose creation time is known before one whose
// is not, and by name when that does not decide.
func ClaimsBefore(aName string, aCreated time.Time, bName string, bCreated time.Time) bool {
	switch {
	case !aCreated.Equal(bCreated) && !aCreated.IsZero() && !bCreated.IsZero():
		return aCreated.Before(bCreated)
	case aCreated.IsZero() != bCreated.IsZero():
		return !aCreated.IsZero()
	}
	return aName < bName
}

// RoutePath is the route a valid path names: "/x" and "/x/" are one route,
// written without the trailing '/'; "/" stays "/". Two paths with one
// RoutePath are duplicates.
func RoutePath(p string) string {
	if r := strings.TrimRight(p, "/"); r != "" {
		return r
	}
	return "/"
}

// CheckHeaderName checks an HTTP header name.
func CheckHeaderName(s string) error {
	if len(s) > MaxHeaderNameLen || !headerName.MatchString(s) {
		return fmt.Errorf("%q is not a valid header name (letters, digits and '-', starting with a letter or digit, at most %d characters)", s, MaxHeaderNameLen)
	}
	return nil
}

// CheckHeaderValue checks an HTTP header value: printable ASCII with no
// quotes, backslashes, ';', '{', '}', '#' or control characters.
func CheckHeaderValue(s string) error {
	if len(s) > MaxHeaderValueLen || !NginxSafe(s) || strings.TrimSpace(s) != s {
		return fmt.Errorf("%q is not a valid header value (printable ASCII without quotes, backslash, ';', '{', '}', '#', leading or trailing spaces, at most %d characters)", s, MaxHeaderValueLen)
	}
	return nil
}

// CheckHashKey checks an nginx hash key: one or more allowed variables,
// joined directly or by '-', '_', ':' or '/'. Allowed are $remote_addr,
// $binary_remote_addr, $request_uri, $uri, $host, $http_host, $scheme, $args,
// $server_name, and $http_NAME, $cookie_NAME and $arg_NAME with NAME of
// lowercase letters, digits and '_'.
func CheckHashKey(s string) error {
	if !hashKeyOK(s) {
		return fmt.Errorf("%q is not an allowed hash key (one or more of $remote_addr, $binary_remote_addr, $request_uri, $uri, $host, $http_host, $scheme, $args, $server_name, $http_NAME, $cookie_NAME, $arg_NAME, joined by nothing or by - _ : /)", s)
	}
	return nil
}

func hashKeyOK(s string) bool {
	if s == "" || len(s) > MaxHashKeyLen {
		return false
	}
	locs := hashVar.FindAllStringIndex(s, -1)
	if len(locs) == 0 {
		return false
	}
	prev := 0
	for _, l := range locs {
		if strings.Trim(s[prev:l[0]], "-_:/") != "" {
			return false
		}
		prev = l[1]
	}
	return prev == len(s)
}

// CheckFilePath checks a certificate or key path: absolute, clean, and made
// of letters, digits and . _ + @ / -.
func CheckFilePath(s string) error {
	if len(s) > MaxFilePathLen || !filePathRe.MatchString(s) || filepath.Clean(s) != s || s == "/" {
		return fmt.Errorf("%q is not a valid file path (absolute and clean, letters, digits and . _ + @ / -, at most %d characters)", s, MaxFilePathLen)
	}
	return nil
}

// CheckEnvName checks an environment variable name.
func CheckEnvName(s string) error {
	if len(s) > MaxEnvNameLen || !envName.MatchString(s) {
		return fmt.Errorf("%q is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most %d characters)", s, MaxEnvNameLen)
	}
	return nil
}

// CheckEnvValue checks an environment variable value without quoting it,
// since values are secrets.
func CheckEnvValue(s string) error {
	if strings.ContainsRune(s, 0) {
		return fmt.Errorf("value must not contain a NUL byte")
	}
	return nil
}

// CheckImage checks an image reference ("registry.local/web:1.4.2",
// "web@sha256:…", "web:1.4.2@sha256:…") with Docker's own grammar, which
// checks a digest's algorithm and length too.
func CheckImage(s string) error {
	if _, err := reference.ParseNormalizedNamed(s); err != nil {
		return fmt.Errorf("%q is not a valid image reference (%v; e.g. registry.local/web:1.4.2, or pinned: registry.local/web@sha256:<64 lowercase hex digits>)", s, err)
	}
	return nil
}

// CheckSignal checks a stop signal name against Signals.
func CheckSignal(s string) error {
	for _, v := range Signals {
		if s == v {
			return nil
		}
	}
	return fmt.Errorf("%q is not an allowed signal (one of %s)", s, strings.Join(Signals, ", "))
}

// CheckMethod checks a health check HTTP method against HTTPMethods.
func CheckMethod(s string) error {
	if httpMethod.MatchString(s) {
		for _, v := range HTTPMethods {
			if s == v {
				return nil
			}
		}
	}
	return fmt.Errorf("%q is not an allowed method (one of %s)", s, strings.Join(HTTPMethods, ", "))
}

// CheckLBMethod checks a load balancing method.
func CheckLBMethod(s string) error {
	switch s {
	case LBRoundRobin, LBLeastConn, LBIPHash, LBHash, LBRandomTwoLeastConn:
		return nil
	}
	return fmt.Errorf("%q is not a load balancing method (one of %s, %s, %s, %s, %s)", s,
		LBRoundRobin, LBLeastConn, LBIPHash, LBHash, LBRandomTwoLeastConn)
}
