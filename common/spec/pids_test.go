package spec

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestResourcesPids(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  string
		want int
	}{
		{"absent is the default", base, DefaultPids},
		{"absent beside other limits", base + "resources: {cpu: 1}\n", DefaultPids},
		{"raised", base + "resources: {pids: 4096}\n", 4096},
		{"lowest", base + "resources: {pids: 16}\n", MinPids},
		{"highest", base + "resources: {pids: 32768}\n", MaxPids},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			app, err := Load([]byte(tt.src))
			require.NoError(t, err)
			require.Equal(t, tt.want, app.Resources.Pids)
		})
	}
	runProblems(t, []problemCase{
		{"pids too low", base + "resources: {pids: 15}\n", []string{"resources.pids: (15) must be between 16 and 32768"}},
		{"pids too high", base + "resources: {pids: 32769}\n", []string{"resources.pids: (32769) must be between 16 and 32768"}},
		{"pids unlimited", base + "resources: {pids: -1}\n", []string{"resources.pids: (-1) must be between 16 and 32768"}},
	})
}

func TestDefaultFillsPids(t *testing.T) {
	t.Parallel()
	a := &App{}
	a.Default()
	require.Equal(t, DefaultPids, a.Resources.Pids)
}
