package main

import (
	"testing"

	"github.com/callbackd/callbackd/api"
)

func TestIDFlags(t *testing.T) {
	for _, tt := range []struct {
		account, project string
		wantA, wantP     string
		bad              bool
	}{
		{"", "", "", "", false},
		{"7", "123", "7", "123", false},
		{api.GlobalID(api.TypeAccount, "7"), "TjAwNlByb2plY3QxMjM", "7", "123", false},
		{"TjAwNkFjY291bnQ3", "TjAwNlByb2plY3QxMjM=", "7", "123", false},
		{"_", "_", "_", "_", false},
		{"TjAwNlByb2plY3QxMjM", "", "", "", true}, // a project's ID as the account
		{"", "0123", "", "", true},
		{"", "abc", "", "", true},
	} {
		a, p := tt.account, tt.project
		err := idFlags(&a, &p)
		if tt.bad {
			if err == nil {
				t.Errorf("idFlags(%q, %q) = %q, %q; want an error", tt.account, tt.project, a, p)
			}
			continue
		}
		if err != nil || a != tt.wantA || p != tt.wantP {
			t.Errorf("idFlags(%q, %q) = %q, %q, %v; want %q, %q", tt.account, tt.project, a, p, err, tt.wantA, tt.wantP)
		}
	}
}

func TestJSONObject(t *testing.T) {
	for in, ok := range map[string]bool{
		`{}`:                       true,
		` {"crawl_id": 1} ` + "\n": true,
		`{bad`:                     false,
		`[1]`:                      false,
		`"str"`:                    false,
		`null`:                     false,
		`{"a":1}{"b":2}`:           false,
		`{"a":1} x`:                false,
		``:                         false,
		`{"a":1,"a":2}`:            false, // the encoders refuse a key given twice
		`{"a":{"b":1,"b":2}}`:      true,  // (at the top level)
		"{\"a\":\"\xff\"}":         false, // not UTF-8
		`{"a":"\u00e9"}`:           true,
	} {
		if err := jsonObject([]byte(in)); (err == nil) != ok {
			t.Errorf("jsonObject(%q) = %v, want ok %v", in, err, ok)
		}
	}
}
