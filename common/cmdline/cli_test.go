package cmdline

import (
	"bytes"
	"testing"

	"github.com/alecthomas/kong"
	"github.com/stretchr/testify/require"
)

type flags struct {
	Name string `help:"A name." default:"${def}"`
}

func TestParse(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	c, _, code, done := Parse[flags]("demo", "A demo.", kong.Vars{"def": "x"}, []string{"--name", "y"}, &out, &errOut)
	require.False(t, done)
	require.Zero(t, code)
	require.Equal(t, "y", c.Name)

	c, _, _, _ = Parse[flags]("demo", "A demo.", kong.Vars{"def": "x"}, nil, &out, &errOut)
	require.Equal(t, "x", c.Name, "defaults come from the vars")

	_, _, code, done = Parse[flags]("demo", "A demo.", kong.Vars{"def": "x"}, []string{"--help"}, &out, &errOut)
	require.True(t, done)
	require.Zero(t, code)
	require.Contains(t, out.String(), "A demo.")

	_, _, code, done = Parse[flags]("demo", "A demo.", kong.Vars{"def": "x"}, []string{"--nope"}, &out, &errOut)
	require.True(t, done)
	require.Equal(t, ExitUsage, code)
	require.Contains(t, errOut.String(), "demo: unknown flag --nope")
}
