// Package templatedir owns following an operator's templates directory:
// when a template file in it changes, it loads the whole set again and
// hands it to the agent; a set that does not load is logged and refused,
// so the running config stays.
package templatedir

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/berthhq/berth/lbagent/internal/render"
)

// Setter takes a newly loaded template set. SetRenderer is called from
// Run's goroutine, one call at a time, and must not block for long.
type Setter interface {
	SetRenderer(r *render.Renderer)
}

// Watcher reloads the templates in a directory when one changes. Create it
// with New and run it with Run.
type Watcher struct {
	dir    string
	setter Setter
	logger *zap.Logger

	// Settle is how long changes must stop before the set is loaded, so an
	// editor's several writes make one load.
	Settle time.Duration

	// watching and loaded, when set (tests), are called once the
	// directory is watched and after each load with its error.
	watching func()
	loaded   func(error)
}

// New returns a watcher of dir that hands each loaded set to setter.
func New(dir string, setter Setter, logger *zap.Logger) *Watcher {
	return &Watcher{dir: dir, setter: setter, logger: logger, Settle: 200 * time.Millisecond}
}

// Run watches until ctx ends. The directory is watched, not the files, so
// editors that replace a file are seen; only *.tmpl changes count. It
// returns an error only when the directory cannot be watched.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch templates: %w", err)
	}
	defer fw.Close()
	if err := fw.Add(w.dir); err != nil {
		return fmt.Errorf("watch templates %s: %w", w.dir, err)
	}
	if w.watching != nil {
		w.watching()
	}
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-fw.Events:
			if filepath.Ext(ev.Name) == ".tmpl" {
				settle = time.After(w.Settle)
			}
		case err := <-fw.Errors:
			w.logger.Warn("template watch error", zap.Error(err))
		case <-settle:
			r, err := render.Load(os.DirFS(w.dir))
			if err != nil {
				w.logger.Error("template edit refused, keeping the running config", zap.Error(err))
			} else {
				w.logger.Info("templates reloaded", zap.String("templates", w.dir))
				w.setter.SetRenderer(r)
			}
			if w.loaded != nil {
				w.loaded(err)
			}
		}
	}
}
