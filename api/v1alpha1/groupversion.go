package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the API group and version of HAGroup.
var GroupVersion = schema.GroupVersion{Group: "hapod.io", Version: "v1alpha1"}

// Resource is the HAGroup resource, for RESTMappers and dynamic clients.
var Resource = GroupVersion.WithResource("hagroups")

var (
	schemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds HAGroup and HAGroupList to a scheme.
	AddToScheme = schemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion, &HAGroup{}, &HAGroupList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
