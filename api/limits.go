package api

import (
	"context"
	"strings"

	"github.com/99designs/gqlgen/graphql"
	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/gqlerror"
)

// operationLimits refuses operations, before gqlgen's complexity walk
// (which expands fragments), that
//   - select more than maxFields fields once their fragments are expanded
//     (counted once per fragment: a few hundred bytes of fragments that each
//     spread the next twice expand to millions of fields);
//   - nest fields deeper than maxDepth (the schema's deepest real query,
//     deliveries → edges → node → field, is 4 levels; introspection fields
//     are not counted, since the schema bounds their answers);
//   - select field at their top level more than maxField times (aliases and
//     fragments counted): a mutation runs its fields one after the other,
//     and some take long.
type operationLimits struct {
	maxFields, maxDepth int
	field               string
	maxField            int
}

var _ interface {
	graphql.HandlerExtension
	graphql.OperationContextMutator
} = operationLimits{}

func (operationLimits) ExtensionName() string                   { return "OperationLimits" }
func (operationLimits) Validate(graphql.ExecutableSchema) error { return nil }

func (l operationLimits) MutateOperationContext(_ context.Context, oc *graphql.OperationContext) *gqlerror.Error {
	op := oc.Doc.Operations.ForName(oc.OperationName)
	if op == nil {
		return nil
	}
	limitErr := func(code, format string, args ...any) *gqlerror.Error {
		err := gqlerror.Errorf(format, args...)
		err.Extensions = map[string]any{"code": code}
		return err
	}
	// The size first: the other two walk the expanded operation.
	e := expander{frags: oc.Doc.Fragments, max: l.maxFields, size: map[string]int{}}
	if n := e.count(op.SelectionSet); n > l.maxFields {
		return limitErr("COMPLEXITY_LIMIT_EXCEEDED", "operation selects more than %d fields once its fragments are expanded", l.maxFields)
	}
	if depth := selectionDepth(op.SelectionSet, oc.Doc.Fragments, 0, l.maxDepth); depth > l.maxDepth {
		return limitErr("DEPTH_LIMIT_EXCEEDED", "operation nests fields more than %d deep", l.maxDepth)
	}
	if n := countField(op.SelectionSet, oc.Doc.Fragments, l.field, map[string]bool{}); n > l.maxField {
		return limitErr("FIELD_LIMIT_EXCEEDED", "operation selects %s %d times, at most %d are allowed in one request", l.field, n, l.maxField)
	}
	return nil
}

// selectionDepth returns how deep set nests below depth, stopping as soon as
// it exceeds limit (so fragment cycles, which validation rejects anyway,
// cannot loop).
func selectionDepth(set ast.SelectionSet, frags ast.FragmentDefinitionList, depth, limit int) int {
	deepest := depth
	for _, sel := range set {
		if deepest > limit {
			return deepest
		}
		var d int
		switch s := sel.(type) {
		case *ast.Field:
			if strings.HasPrefix(s.Name, "__") {
				continue
			}
			d = selectionDepth(s.SelectionSet, frags, depth+1, limit)
		case *ast.InlineFragment:
			d = selectionDepth(s.SelectionSet, frags, depth, limit)
		case *ast.FragmentSpread:
			def := s.Definition
			if def == nil {
				def = frags.ForName(s.Name)
			}
			if def == nil {
				continue
			}
			d = selectionDepth(def.SelectionSet, frags, depth, limit)
		}
		deepest = max(deepest, d)
	}
	return deepest
}

// countField counts the fields named name in set, through fragments (each
// fragment spread counts as often as it is spread; seen stops cycles, which
// validation refuses anyway).
func countField(set ast.SelectionSet, frags ast.FragmentDefinitionList, name string, seen map[string]bool) int {
	n := 0
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			if s.Name == name {
				n++
			}
		case *ast.InlineFragment:
			n += countField(s.SelectionSet, frags, name, seen)
		case *ast.FragmentSpread:
			def := s.Definition
			if def == nil {
				def = frags.ForName(s.Name)
			}
			if def == nil || seen[def.Name] {
				continue
			}
			seen[def.Name] = true
			n += countField(def.SelectionSet, frags, name, seen)
			delete(seen, def.Name)
		}
	}
	return n
}

// expander counts the fields of a selection set with its fragments
// expanded, each fragment's count worked out once; counts saturate just
// above max.
type expander struct {
	frags ast.FragmentDefinitionList
	max   int
	size  map[string]int // fragment name → its expanded count; -1 while counting it
}

func (e *expander) count(set ast.SelectionSet) int {
	n := 0
	for _, sel := range set {
		switch s := sel.(type) {
		case *ast.Field:
			n += 1 + e.count(s.SelectionSet)
		case *ast.InlineFragment:
			n += e.count(s.SelectionSet)
		case *ast.FragmentSpread:
			name := s.Name
			k, ok := e.size[name]
			switch {
			case ok && k < 0: // a cycle: validation refuses it
			case ok:
				n += k
			default:
				def := s.Definition
				if def == nil {
					def = e.frags.ForName(name)
				}
				if def == nil {
					continue
				}
				e.size[name] = -1
				k = e.count(def.SelectionSet)
				e.size[name] = k
				n += k
			}
		}
		if n > e.max {
			return e.max + 1
		}
	}
	return n
}
