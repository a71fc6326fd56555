package nginx

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseStatCPU(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, stat string
		want       time.Duration
		err        string
	}{
		{name: "a master", stat: "4242 (nginx) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 69 0 0 20 0 1 0 100 1000 200",
			want: 8 * time.Second},
		{name: "a command name with spaces and parentheses", stat: "7 (ngi) x (y) R 1 7 7 0 -1 0 0 0 0 0 5 5 0 0 20 0 1 0 1 1 1",
			want: 100 * time.Millisecond},
		{name: "no command name", stat: "7 nginx S 1", err: "without a command name"},
		{name: "cut short", stat: "7 (nginx) S 1 7 7", err: "want 13 or more"},
		{name: "not a number", stat: "7 (nginx) S 1 7 7 0 -1 0 0 0 0 0 x 5 0 0", err: "not a tick count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := parseStatCPU(tt.stat)
			if tt.err != "" {
				require.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestMasterCPUReadsALiveProcess(t *testing.T) {
	t.Parallel()
	_, err := MasterCPU(os.Getpid())
	require.NoError(t, err)
	_, err = MasterCPU(1)
	require.ErrorContains(t, err, "not a master")
}
