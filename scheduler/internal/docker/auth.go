package docker

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/registry"
)

// dockerHub is the registry domain distribution/reference gives Docker Hub
// images; every alias of Docker Hub in a config.json is keyed by it.
const dockerHub = "docker.io"

// hubAliases are the names docker login and tooling write for Docker Hub.
var hubAliases = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

// RegistryAuths holds registry credentials by registry host, read from a
// Docker config.json. A pull gets only the credentials of its image's
// registry, and none when no entry matches. The zero value holds none. It
// is read-only after LoadRegistryAuths and safe for concurrent use. Its
// credentials are never logged or printed.
type RegistryAuths struct {
	byHost map[string]string              // registry host → encoded X-Registry-Auth
	logins map[string]registry.AuthConfig // registry host → its credential, for the resolver
	// withheld are the registries that have credentials in the file but
	// not for this holder (Only): a failed pull from one says so.
	withheld map[string]bool
}

// LoadRegistryAuths reads the "auths" of a Docker config.json at path. An
// empty path gives no credentials. Entries without an auth or identity token
// (those a credential helper fills) are skipped; credential helpers are not
// run.
func LoadRegistryAuths(path string) (*RegistryAuths, error) {
	if path == "" {
		return &RegistryAuths{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--registry-auth-file: %w", err)
	}
	a, err := ParseRegistryAuths(b)
	if err != nil {
		return nil, fmt.Errorf("--registry-auth-file %s: %w", path, err)
	}
	return a, nil
}

// ParseRegistryAuths parses the "auths" of a Docker config.json. Keys may
// be a host ("ghcr.io", "localhost:5000") or a URL
// ("https://index.docker.io/v1/"); Docker Hub's aliases all mean Docker Hub.
// Two entries for one registry are an error, as is an auth that is not
// base64 of user:password. Errors never hold a credential.
func ParseRegistryAuths(b []byte) (*RegistryAuths, error) {
	var cfg struct {
		Auths map[string]struct {
			Auth          string `json:"auth"`
			IdentityToken string `json:"identitytoken"`
		} `json:"auths"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return nil, fmt.Errorf("not a Docker config.json: %w", errNoValue(err))
	}
	keys := make([]string, 0, len(cfg.Auths))
	for k := range cfg.Auths {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := &RegistryAuths{byHost: map[string]string{}, logins: map[string]registry.AuthConfig{}}
	from := map[string]string{}
	for _, server := range keys {
		e := cfg.Auths[server]
		if e.Auth == "" && e.IdentityToken == "" {
			continue
		}
		host := registryHost(server)
		if host == "" {
			return nil, fmt.Errorf("auths key %q: not a registry host or URL", server)
		}
		if prev, dup := from[host]; dup {
			return nil, fmt.Errorf("auths keys %q and %q are the same registry %s; keep one", prev, server, host)
		}
		ac := registry.AuthConfig{ServerAddress: server, IdentityToken: e.IdentityToken}
		if e.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			user, pass, ok := strings.Cut(string(raw), ":")
			if err != nil || !ok {
				return nil, fmt.Errorf("the auth of %s is not base64 of user:password", server)
			}
			ac.Username, ac.Password = user, pass
		}
		js, err := json.Marshal(ac)
		if err != nil {
			return nil, fmt.Errorf("the auth of %s: %w", server, err)
		}
		out.byHost[host] = base64.URLEncoding.EncodeToString(js)
		out.logins[host] = ac
		from[host] = server
	}
	return out, nil
}

// Hosts lists the registries that have credentials, sorted; for logs.
func (a *RegistryAuths) Hosts() []string {
	if a == nil {
		return nil
	}
	out := make([]string, 0, len(a.byHost))
	for h := range a.byHost {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// Only returns the credentials of the named registries alone (host[:port]
// as an image names it; Docker Hub's aliases are one): what one registered
// host's engine may receive. The others are withheld: For gives none for
// them, and Withheld names them.
func (a *RegistryAuths) Only(registries []string) *RegistryAuths {
	out := &RegistryAuths{byHost: map[string]string{}, logins: map[string]registry.AuthConfig{}, withheld: map[string]bool{}}
	if a == nil {
		return out
	}
	allowed := map[string]bool{}
	for _, r := range registries {
		if h := registryHost(r); h != "" {
			allowed[h] = true
		}
	}
	for h, enc := range a.byHost {
		if allowed[h] {
			out.byHost[h] = enc
			if l, ok := a.logins[h]; ok {
				out.logins[h] = l
			}
		} else {
			out.withheld[h] = true
		}
	}
	for h := range a.withheld {
		out.withheld[h] = true
	}
	return out
}

// Withheld returns the registry of ref when it has credentials that this
// holder may not send (see Only), or "".
func (a *RegistryAuths) Withheld(ref string) string {
	if a == nil || len(a.withheld) == 0 {
		return ""
	}
	h := refRegistry(ref)
	if a.withheld[h] {
		return h
	}
	return ""
}

// For returns the encoded credentials for pulling ref: those of the
// registry ref names (Docker Hub when it names none), or "" when there are
// none or ref does not parse.
func (a *RegistryAuths) For(ref string) string {
	if a == nil || len(a.byHost) == 0 {
		return ""
	}
	h := refRegistry(ref)
	if h == "" {
		return ""
	}
	return a.byHost[h]
}

// Login returns the credential of a registry (host[:port] as an image names
// it; Docker Hub's aliases are one), ok false when there is none: what the
// scheduler's tag resolver (scheduler/internal/image) sends it. Never log
// what it returns.
func (a *RegistryAuths) Login(registry string) (user, password, identityToken string, ok bool) {
	if a == nil {
		return "", "", "", false
	}
	l, ok := a.logins[registryHost(registry)]
	return l.Username, l.Password, l.IdentityToken, ok
}

// refRegistry is the registry host ref pulls from (docker.io when it
// names none), or "" when ref does not parse.
func refRegistry(ref string) string {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return ""
	}
	return registryHost(reference.Domain(named))
}

// registryHost is the lowercase host[:port] a config.json key or an image
// domain names, with Docker Hub's aliases folded into "docker.io"; "" when
// there is none.
func registryHost(server string) string {
	s := strings.ToLower(strings.TrimSpace(server))
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	if hubAliases[s] {
		return dockerHub
	}
	if s == "" || strings.ContainsAny(s, " @?#") {
		return ""
	}
	return s
}

// errNoValue keeps a JSON error from echoing file content: a syntax error's
// message names an offset, not the bytes, but a type error can name a value.
func errNoValue(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Errorf("%s must be %s, not a JSON %s", te.Field, te.Type, te.Value)
	}
	return fmt.Errorf("invalid JSON")
}
