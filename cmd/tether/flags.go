package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// parseFlags parses a command's flags. --help (or -h) prints about (what
// the command does) and every flag with its default to stdout: ok is false
// and code 0. A bad flag prints the error and where to find help to stderr,
// not the whole list that would scroll the error away: ok is false and
// code 2. Otherwise ok is true.
func parseFlags(fs *flag.FlagSet, args []string, about string, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, about)
		fmt.Fprintln(stdout, "\nFlags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\nRun '%s --help' for its flags.\n", fs.Name(), err, fs.Name())
		return 2, false
	}
	fs.SetOutput(stderr)
	return 0, true
}
