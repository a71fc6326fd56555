package templatedir

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/templates"
)

// setter records each template set it is given.
type setter chan *render.Renderer

func (s setter) SetRenderer(r *render.Renderer) { s <- r }

var _ Setter = setter(nil)

// copyTemplates writes Berth's templates into a new directory.
func copyTemplates(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := templates.FS.ReadDir(".")
	require.NoError(t, err)
	for _, e := range entries {
		if filepath.Ext(e.Name()) != ".tmpl" {
			continue
		}
		b, err := templates.FS.ReadFile(e.Name())
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644))
	}
	return dir
}

// start runs a watcher of dir until the test ends; stop ends it and
// returns what Run returned.
func start(t *testing.T, dir string, s Setter) (stop func() error) {
	t.Helper()
	stop, _, _ = startWatched(t, dir, s)
	return stop
}

// startWatched is start, and also returns a channel closed once the
// directory is watched, and one that gets each load's error.
func startWatched(t *testing.T, dir string, s Setter) (stop func() error, watching <-chan struct{}, loads <-chan error) {
	t.Helper()
	w := New(dir, s, zaptest.NewLogger(t))
	w.Settle = 20 * time.Millisecond
	watched, loaded := make(chan struct{}), make(chan error, 16)
	w.watching = func() { close(watched) }
	w.loaded = func(err error) { loaded <- err }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	stop = func() error {
		cancel()
		select {
		case err := <-done:
			done <- err // a second stop gets it too
			return err
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after its context ended")
			return nil
		}
	}
	t.Cleanup(func() { _ = stop() })
	return stop, watched, loaded
}

func TestWatcherReloadsOnTemplateChange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// change edits the directory.
		change  func(t *testing.T, dir string)
		wantSet bool
	}{
		{
			name: "an edited template is loaded and handed over",
			change: func(t *testing.T, dir string) {
				p := filepath.Join(dir, "http.conf.tmpl")
				b, err := os.ReadFile(p)
				require.NoError(t, err)
				require.NoError(t, os.WriteFile(p, append(b, []byte("\n# edited\n")...), 0o644))
			},
			wantSet: true,
		},
		{
			name: "a template replaced by rename (as editors do) is seen",
			change: func(t *testing.T, dir string) {
				b, err := os.ReadFile(filepath.Join(dir, "app.conf.tmpl"))
				require.NoError(t, err)
				tmp := filepath.Join(dir, ".app.conf.swp")
				require.NoError(t, os.WriteFile(tmp, b, 0o644))
				require.NoError(t, os.Rename(tmp, filepath.Join(dir, "app.conf.tmpl")))
			},
			wantSet: true,
		},
		{
			name: "a broken template is refused",
			change: func(t *testing.T, dir string) {
				// Replaced whole, so that no half-written file loads first.
				p := filepath.Join(dir, "http.conf.tmpl")
				b, err := os.ReadFile(p)
				require.NoError(t, err)
				tmp := filepath.Join(dir, ".http.conf.swp")
				require.NoError(t, os.WriteFile(tmp, []byte(strings.Replace(string(b), "{{", "{{ end", 1)), 0o644))
				require.NoError(t, os.Rename(tmp, p))
			},
		},
		{
			name: "other files are ignored",
			change: func(t *testing.T, dir string) {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hi"), 0o644))
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := copyTemplates(t)
			s := make(setter, 4)
			_, watching, loads := startWatched(t, dir, s)
			// fsnotify watches from Add on: change the directory after.
			<-watching
			tt.change(t, dir)
			// load is the next load's error; a watcher that never loads
			// fails the test rather than hanging it.
			load := func() error {
				select {
				case err := <-loads:
					return err
				case <-time.After(10 * time.Second):
					t.Fatal("the change was never loaded")
					return nil
				}
			}
			switch {
			case tt.wantSet:
				// A write in place may be seen half done (truncated, then
				// written) by a slow machine: that load is refused, and the
				// whole file's comes next.
				for load() != nil {
				}
				require.NotNil(t, <-s, "the new template set is handed over")
			case tt.name == "a broken template is refused":
				require.Error(t, load(), "the broken set is refused")
				require.Empty(t, s, "no template set is handed over")
			default:
				// Nothing else writes to the directory: a load would be this
				// change's, and none may come.
				select {
				case err := <-loads:
					t.Fatalf("a change of another file loaded the templates (%v)", err)
				case <-time.After(500 * time.Millisecond): // 25 settle periods
				}
			}
		})
	}
}

func TestWatcherRunErrorsAndStops(t *testing.T) {
	t.Parallel()
	stop := start(t, filepath.Join(t.TempDir(), "missing"), make(setter))
	require.ErrorContains(t, stop(), "watch templates")

	stop = start(t, copyTemplates(t), make(setter))
	require.NoError(t, stop(), "Run returns nil when its context ends")
}
