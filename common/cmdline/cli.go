// Package cmdline owns how every daemon parses its command line with kong:
// help and usage errors go to the given writers, and kong's exits become
// exit codes returned to main, which alone exits.
package cmdline

import (
	"fmt"
	"io"

	"github.com/alecthomas/kong"
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
