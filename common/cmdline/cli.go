// Package cmdline owns how every daemon starts: it parses the command
// line with kong (help and usage errors go to the given writers, and
// kong's exits become exit codes returned to main, which alone exits),
// reports an invalid configuration, and builds the logger and the signal
// context.
package cmdline

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/alecthomas/kong"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/lifecycle"
	"github.com/berthhq/berth/common/logging"
)

// ExitUsage is the exit code of a usage error.
const ExitUsage = 2

// Parse parses args into a new T. done reports that the program should
// exit now with code: --help was shown (0) or the arguments were wrong
// (ExitUsage, with the error on stderr).
func Parse[T any](name, description string, vars kong.Vars, args []string, stdout, stderr io.Writer) (c *T, kctx *kong.Context, code int, done bool) {
	c = new(T)
	exitCode, exited := 0, false
	p, err := kong.New(c, kong.Name(name), kong.Description(description), vars,
		kong.Writers(stdout, stderr), kong.Exit(func(code int) { exitCode, exited = code, true }))
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, nil, ExitUsage, true
	}
	kctx, err = p.Parse(args)
	switch {
	case exited:
		return nil, nil, exitCode, true
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return nil, nil, ExitUsage, true
	}
	return c, kctx, 0, false
}

// Invalid prints a configuration error the way every daemon does and
// returns its exit code: 1 when only checking the configuration
// (--check-config), ExitUsage otherwise.
func Invalid(stderr io.Writer, name string, err error, checkOnly bool) int {
	fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", name, err)
	if checkOnly {
		return 1
	}
	return ExitUsage
}

// Start is how every daemon starts once its flags are valid: a zap logger
// on stderr with the flags' level and format, and a context the first
// SIGINT or SIGTERM ends (a second one exits at once). stop releases the
// signals and syncs the logger.
func Start(stderr io.Writer, level, format string) (ctx context.Context, logger *zap.Logger, stop func(), err error) {
	logger, err = logging.New(logging.Options{Level: level, Format: format, Output: stderr})
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, release := lifecycle.SignalContext(context.Background(), logger, os.Exit)
	return ctx, logger, func() {
		release()
		_ = logger.Sync()
	}, nil
}
