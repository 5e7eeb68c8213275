package main

import (
	"fmt"

	"github.com/callbackd/callbackd/api"
	"github.com/callbackd/callbackd/subjects"
)

// idFlags turn --account and --project values into the plain numbers that
// subjects use: each takes a plain number or a global ID of its type, as
// the API's inputs do (SPEC §4). "" (no filter) and subjects.LogUnparsed
// ("_", the delivery log's records without one) pass as they are.
func idFlags(account, project *string) error {
	for _, f := range []struct {
		flag, typ string
		v         *string
	}{{"--account", api.TypeAccount, account}, {"--project", api.TypeProject, project}} {
		if *f.v == "" || *f.v == subjects.LogUnparsed {
			continue
		}
		n, err := api.ParseID(f.typ, *f.v)
		if err != nil {
			return usageError{fmt.Errorf("%s: %w", f.flag, err)}
		}
		*f.v = n
	}
	return nil
}
