package spec

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestScheduledHealthRefusesHostileInput is the docker and exec checks'
// share of the hostile-spec corpus: each problem is refused naming its
// field.
func TestScheduledHealthRefusesHostileInput(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", MaxArgLen+1)
	many := "[" + strings.TrimSuffix(strings.Repeat("a, ", MaxHealthCommandArgs+1), ", ") + "]"
	runProblems(t, []problemCase{
		{"unknown type", base + "health: {type: grpc}\n", []string{`health.type: "grpc" is not a health check type (http, tcp, docker or exec)`}},
		{"docker block on http", base + "health: {docker: {retries: 3}}\n", []string{"health.docker: is only for type docker"}},
		{"exec block on docker", base + "health: {type: docker, exec: {command: [c]}}\n", []string{"health.exec: is only for type exec"}},
		{"http field on docker", base + "health: {type: docker, path: /healthz}\n", []string{"health.path: is only for type http"}},
		{"max_response_time on docker", base + "health: {type: docker, max_response_time: 1s}\n", []string{"health.max_response_time: is only for type http or tcp"}},
		{"tcp field on exec", base + "health: {type: exec, exec: {command: [c]}, send: PING}\n", []string{"health.send: is only for type tcp"}},
		{"docker test a string", base + "health: {type: docker, docker: {test: \"curl -f localhost\"}}\n", []string{"health.docker.test: must be a list, not the string"}},
		{"docker test shell string without shell", base + "health: {type: docker, docker: {test: [\"curl -f localhost\"]}}\n", []string{`health.docker.test[0]: ("curl -f localhost") is a program name with spaces`}},
		{"docker test in Docker's form", base + "health: {type: docker, docker: {test: [CMD-SHELL, \"curl -f x\"]}}\n", []string{`health.docker.test[0]: ("CMD-SHELL") is Docker's test form`}},
		{"docker test NONE", base + "health: {type: docker, docker: {test: [NONE]}}\n", []string{`health.docker.test[0]: ("NONE") is Docker's test form`}},
		{"docker shell with two strings", base + "health: {type: docker, docker: {test: [a, b], shell: true}}\n", []string{"health.docker.test: has 2 arguments; with shell: true it is one string"}},
		{"docker shell with no test", base + "health: {type: docker, docker: {shell: true}}\n", []string{"health.docker.test: must be set"}},
		{"docker test empty program", base + "health: {type: docker, docker: {test: [\" \", x]}}\n", []string{"health.docker.test[0]: must not be empty"}},
		{"docker test NUL", base + "health: {type: docker, docker: {test: [c, \"a\\u0000b\"]}}\n", []string{"health.docker.test[1]: must have no NUL byte"}},
		{"docker test huge argument", base + "health: {type: docker, docker: {test: [c, " + long + "]}}\n", []string{"health.docker.test[1]: must have no NUL byte and at most 4096 characters"}},
		{"docker test too many arguments", base + "health: {type: docker, docker: {test: " + many + "}}\n", []string{"health.docker.test: has 65 arguments; at most 64"}},
		{"docker interval too short", base + "health: {type: docker, docker: {interval: 10ms}}\n", []string{"health.docker.interval: (10ms) must be between 1s and 1h0m0s"}},
		{"docker interval a number", base + "health: {type: docker, docker: {interval: 5}}\n", []string{`health.docker.interval: must be a duration string such as "5s", not the number 5`}},
		{"docker interval negative", base + "health: {type: docker, docker: {interval: -5s}}\n", []string{`health.docker.interval: "-5s" is negative`}},
		{"docker timeout too short", base + "health: {type: docker, docker: {timeout: 1ms}}\n", []string{"health.docker.timeout: (1ms) must be between 100ms and 1h0m0s"}},
		{"docker timeout over interval", base + "health: {type: docker, docker: {interval: 2s, timeout: 3s}}\n", []string{"health.docker.timeout: (3s) must be less than health.docker.interval (2s)"}},
		{"docker retries negative", base + "health: {type: docker, docker: {retries: -1}}\n", []string{"health.docker.retries: (-1) must be between 0 and 100"}},
		{"docker retries huge", base + "health: {type: docker, docker: {retries: 99999999999}}\n", []string{"health.docker.retries: must be a whole number between", "health.docker.retries: (99999999999) must be between 0 and 100"}},
		{"docker start_period too long", base + "health: {type: docker, docker: {start_period: 100h}}\n", []string{"health.docker.start_period: (100h0m0s) must be between 0s and 1h0m0s"}},
		{"docker unknown field", base + "health: {type: docker, docker: {cmd: [c]}}\n", []string{`health.docker.cmd: unknown field`}},
		{"docker not a mapping", base + "health: {type: docker, docker: [c]}\n", []string{"health.docker: must be a mapping of fields, not a list"}},
		{"exec missing", base + "health: {type: exec}\n", []string{"health.exec: must be set for type exec"}},
		{"exec command missing", base + "health: {type: exec, exec: {shell: false}}\n", []string{"health.exec.command: must be set"}},
		{"exec command a string", base + "health: {type: exec, exec: {command: \"/app/check; rm -rf /\"}}\n", []string{"health.exec.command: must be a list, not the string"}},
		{"exec shell string without shell", base + "health: {type: exec, exec: {command: [\"/app/check && rm -rf /\"]}}\n", []string{`health.exec.command[0]: ("/app/check && rm -rf /") is a program name with spaces`}},
		{"exec shell with an argv", base + "health: {type: exec, exec: {command: [sh, x], shell: true}}\n", []string{"health.exec.command: has 2 arguments; with shell: true it is one string"}},
		{"exec NUL", base + "health: {type: exec, exec: {command: [\"c\\u0000\"]}}\n", []string{"health.exec.command[0]: must have no NUL byte"}},
		{"exec number in argv", base + "health: {type: exec, exec: {command: [c, 3]}}\n", []string{"health.exec.command[1]: must be a string, not the number 3"}},
		{"exec too many arguments", base + "health: {type: exec, exec: {command: " + many + "}}\n", []string{"health.exec.command: has 65 arguments; at most 64"}},
		{"exec interval too short", base + "health: {type: exec, exec: {command: [c]}, interval: 500ms, timeout: 100ms}\n", []string{"health.interval: (500ms) must be at least 1s for type exec"}},
		{"exec shell not a boolean", base + "health: {type: exec, exec: {command: [c], shell: \"true\"}}\n", []string{"health.exec.shell: must be"}},
		{"exec unknown field", base + "health: {type: exec, exec: {command: [c], user: root}}\n", []string{`health.exec.user: unknown field`}},
	})
}

func TestScheduledHealthLoads(t *testing.T) {
	t.Parallel()
	a, err := Load([]byte(base + "health: {type: docker}\n"))
	require.NoError(t, err)
	require.True(t, a.Health.Scheduled())
	require.Nil(t, a.Health.Docker.DockerTest(), "no override: the image's HEALTHCHECK")
	require.Empty(t, a.Health.Path, "no http defaults on a docker check")

	a, err = Load([]byte(base + "health: {type: docker, docker: {test: [/app/demo, check, \"http://127.0.0.1:8080/healthz\"], interval: 2s, timeout: 1s, retries: 2, start_period: 5s}}\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"CMD", "/app/demo", "check", "http://127.0.0.1:8080/healthz"}, a.Health.Docker.DockerTest())
	require.Equal(t, 2*time.Second, a.Health.Docker.Interval.Std())
	a, err = Load([]byte(base + "health: {type: docker, docker: {test: [\"curl -f localhost || exit 1\"], shell: true}}\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"CMD-SHELL", "curl -f localhost || exit 1"}, a.Health.Docker.DockerTest())

	a, err = Load([]byte(base + "health: {type: exec, exec: {command: [/app/demo, check, \"http://127.0.0.1:8080/healthz\"]}, interval: 2s, timeout: 1s}\n"))
	require.NoError(t, err)
	require.True(t, a.Health.Scheduled())
	require.Equal(t, []string{"/app/demo", "check", "http://127.0.0.1:8080/healthz"}, a.Health.Exec.Argv())
	a, err = Load([]byte(base + "health: {type: exec, exec: {command: [\"test -f /tmp/ready\"], shell: true}}\n"))
	require.NoError(t, err)
	require.Equal(t, []string{"/bin/sh", "-c", "test -f /tmp/ready"}, a.Health.Exec.Argv())
	back, err := Load(mustJSON(t, a))
	require.NoError(t, err)
	require.Equal(t, a.Health, back.Health, "a stored spec loads again")

	a, err = Load([]byte(base + "health: {type: tcp}\n"))
	require.NoError(t, err)
	require.False(t, a.Health.Scheduled())
}
