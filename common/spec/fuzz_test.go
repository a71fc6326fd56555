package spec

import (
	"os"
	"strings"
	"testing"
)

// FuzzDecodeSpec feeds arbitrary bytes to Load. It must never panic, and
// for every spec it accepts, no string that reaches nginx may hold a
// character that could end a directive, open or close a block, or break
// out of a quoted string.
func FuzzDecodeSpec(f *testing.F) {
	for _, name := range []string{"web.yaml", "minimal.json"} {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		base,
		base + "routing: {hosts: [\"a.com;\"], paths: [\"/}\"]}\n",
		base + "routing: {hosts: [\"a.com\\n}\"]}\n",
		base + "lb: {method: hash, hash_key: \"$remote_addr}\"}\n",
		base + "health: {path: \"/h\\\"\", headers: {X: \"a;b\"}}\n",
		base + "routing: {tls: {certificate: \"/a;b\", key: /k}, hosts: [a.com]}\n",
		base + "scaling: {min: 1, max: 3, target_cpu_percent: 1e308}\n",
		"&a [*a, *a]",
		"a: &x [1]\nb: *x\n",
		"{\"name\": \"\\u0000\"}",
		base + "env: {A: !!binary aGVsbG8=}\n",
		base + "port: 0x1F90\n",
		base + "health: {interval: 1e3s, timeout: 1ns}\n",
		base + "routing: {rules: [{path: \"^/a{1};}\", match: regex}, {path: \"^/(a|b)$\", match: regex}]}\n",
		base + "routing: {rules: [{path: /x, headers: {X-A: \"~^(a|$http_x)\", X-B: \"default\"}, response_headers: {X-C: \"v\\\" always\"}}]}\n",
		base + "routing: {rules: [{path: /x, split: [{app: \"b;c\", weight: 50}], rate_limit: {rps: 1, burst: 1}}]}\n",
		base + "health: {type: docker, docker: {test: [\"curl -f x\"], shell: true, interval: 2s, timeout: 1s, retries: 3, start_period: 5s}}\n",
		base + "health: {type: docker, docker: {test: [CMD-SHELL, \"rm -rf /\"]}}\n",
		base + "health: {type: exec, exec: {command: [/app/check, \"a\\u0000b\"]}}\n",
		base + "health: {type: exec, exec: {command: [\"sh -c x\"], shell: false}, interval: 1s, timeout: 500ms}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		app, err := Load(b)
		if err != nil {
			if app != nil {
				t.Fatal("Load returned a spec with an error")
			}
			return
		}
		for field, s := range nginxStrings(app) {
			if !NginxSafe(s) || strings.ContainsAny(s, ";{}\"'\n\r") {
				t.Fatalf("accepted spec puts %q into nginx via %s", s, field)
			}
		}
		// Regexes may hold a backslash (\d), never one that escapes what
		// nginx's parser reads (a quote, another backslash), and '$' only
		// where no variable name can follow.
		// A health command the scheduler runs in a container is an argv
		// of clean arguments; it goes through a shell only with shell: true,
		// and then is one string.
		if h := app.Health; h != nil {
			for _, cmd := range []struct {
				argv  []string
				shell bool
			}{{dockerTest(h.Docker), h.Docker != nil && h.Docker.Shell}, {execCommand(h.Exec), h.Exec != nil && h.Exec.Shell}} {
				if len(cmd.argv) == 0 {
					continue
				}
				if cmd.shell && len(cmd.argv) != 1 || !cmd.shell && strings.ContainsAny(cmd.argv[0], " \t\n") {
					t.Fatalf("accepted health command %q (shell %v)", cmd.argv, cmd.shell)
				}
				for _, a := range cmd.argv {
					if strings.ContainsRune(a, 0) {
						t.Fatalf("accepted a NUL in health command %q", cmd.argv)
					}
				}
			}
		}
		for field, s := range nginxRegexes(app) {
			if strings.ContainsAny(s, ";{}\"'#` \t\n\r") || strings.Contains(s, `\\`) || strings.HasSuffix(s, `\`) {
				t.Fatalf("accepted spec puts regex %q into nginx via %s", s, field)
			}
			for i := 0; i+1 < len(s); i++ {
				if s[i] == '$' && s[i+1] != ')' && s[i+1] != '|' {
					t.Fatalf("accepted spec puts a variable into nginx via %s: %q", field, s)
				}
			}
		}
	})
}

func dockerTest(d *DockerHealth) []string {
	if d == nil {
		return nil
	}
	return d.Test
}

func execCommand(e *ExecHealth) []string {
	if e == nil {
		return nil
	}
	return e.Command
}

// nginxStrings lists every string of a spec that the lbagent renders into
// nginx config, by field.
func nginxStrings(a *App) map[string]string {
	out := map[string]string{"name": a.Name, "lb.method": a.LB.Method, "lb.hash_key": a.LB.HashKey}
	for i, h := range a.Routing.Hosts {
		out[Index("routing.hosts", i)] = h
	}
	for i, p := range a.Routing.Paths {
		out[Index("routing.paths", i)] = p
	}
	if t := a.Routing.TLS; t != nil {
		out["routing.tls.certificate"], out["routing.tls.key"] = t.Certificate, t.Key
	}
	for i, r := range a.Routing.Rules {
		rp := Index("routing.rules", i)
		if r.Match != MatchRegex {
			out[rp+".path"] = r.Path
		}
		for k, v := range r.ResponseHeaders {
			out[Key(rp+".response_headers", k)+".name"], out[Key(rp+".response_headers", k)] = k, v
			if strings.Contains(v, "$") {
				out[Key(rp+".response_headers", k)] = "$;" // a variable: fail
			}
		}
		for k, v := range r.Headers {
			out[Key(rp+".headers", k)+".name"] = k
			if !strings.HasPrefix(v, "~") {
				out[Key(rp+".headers", k)] = v
				if strings.Contains(v, "$") {
					out[Key(rp+".headers", k)] = "$;"
				}
			}
		}
		for j, sp := range r.Split {
			out[Index(rp+".split", j)+".app"] = sp.App
		}
	}
	if h := a.Health; h != nil {
		out["health.path"] = h.Path
		for k, v := range h.Headers {
			out[Key("health.headers", k)+".name"], out[Key("health.headers", k)] = k, v
		}
	}
	return out
}

// nginxRegexes lists the regexes of a spec that reach nginx, by field.
func nginxRegexes(a *App) map[string]string {
	out := map[string]string{}
	for i, r := range a.Routing.Rules {
		rp := Index("routing.rules", i)
		if r.Match == MatchRegex {
			out[rp+".path"] = r.Path
		}
		for k, v := range r.Headers {
			if re, ok := strings.CutPrefix(v, "~"); ok {
				out[Key(rp+".headers", k)] = re
			}
		}
	}
	return out
}
