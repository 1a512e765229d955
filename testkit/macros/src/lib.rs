//! `#[testkit::needs(...)]` and `#[testkit::host(...)]`: see the `testkit` crate.
//!
//! libtest has no way for a running test to say "skipped", only `#[ignore = "reason"]`, fixed
//! when the test is compiled. So these attributes probe the machine when the test is compiled
//! (with the very checks the test repeats when it starts, from `testkit/src/probe.rs`) and add
//! `#[ignore = "<what is missing>"]` where a need is missing, except in strict mode (CI), where
//! the test is left to run and fail with the reason. The check at the start of the test stays
//! the authority: a test binary compiled elsewhere (as root, run as a user) fails, it never
//! passes untested.
#![forbid(unsafe_code)]

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::parse::Parser as _;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprCall, ExprLit, ItemFn, Lit, Token};

#[allow(dead_code)] // parts of it serve the runtime side only
#[path = "../../src/probe.rs"]
mod probe;

/// `#[testkit::needs(root, kvm, guest_kernel, python_module("yaml"))]` on a `#[test]` or
/// `#[tokio::test]` function.
#[proc_macro_attribute]
pub fn needs(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand(Kind::Needs, attr.into(), item.into(), probe::strict())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// `#[testkit::host(hardware_kvm | no_hardware_kvm | pvm_kvm | hybrid_cgroups)]`: the test is
/// about that kind of host and is ignored on others, strict mode or not.
#[proc_macro_attribute]
pub fn host(
    attr: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    expand(Kind::Host, attr.into(), item.into(), probe::strict())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Needs,
    Host,
}

/// One argument of the attribute: the probe to run now and the tokens that name it at run time.
struct Arg {
    missing: Option<String>,
    runtime: TokenStream,
}

fn parse_arg(kind: Kind, e: &Expr) -> syn::Result<Arg> {
    let err = |msg: &str| syn::Error::new_spanned(e, msg);
    let (name, string) = match e {
        Expr::Path(p) => (
            p.path
                .get_ident()
                .ok_or_else(|| err("expected a name"))?
                .to_string(),
            None,
        ),
        Expr::Call(ExprCall { func, args, .. }) => {
            let Expr::Path(p) = &**func else {
                return Err(err("expected name(\"...\")"));
            };
            let name = p
                .path
                .get_ident()
                .ok_or_else(|| err("expected a name"))?
                .to_string();
            let [Expr::Lit(ExprLit {
                lit: Lit::Str(s), ..
            })] = args.iter().collect::<Vec<_>>()[..]
            else {
                return Err(err("expected one string argument"));
            };
            (name, Some(s.value()))
        }
        _ => return Err(err("expected a name or name(\"...\")")),
    };
    let runtime_need = |variant: TokenStream| quote!(::testkit::Need::#variant);
    let runtime_host = |variant: TokenStream| quote!(::testkit::Host::#variant);
    let need = |n: probe::Need, variant: TokenStream| Arg {
        missing: n
            .check()
            .err()
            .map(|why| format!("needs {}: {why}", n.describe())),
        runtime: runtime_need(variant),
    };
    let host = |h: probe::Host, variant: TokenStream| Arg {
        missing: h
            .check()
            .err()
            .map(|why| format!("only for {}: {why}", h.describe())),
        runtime: runtime_host(variant),
    };
    Ok(match (kind, name.as_str(), string) {
        (Kind::Needs, "root", None) => need(probe::Need::Root, quote!(Root)),
        (Kind::Needs, "kvm", None) => need(probe::Need::Kvm, quote!(Kvm)),
        (Kind::Needs, "guest_kernel", None) => need(probe::Need::GuestKernel, quote!(GuestKernel)),
        (Kind::Needs, "python_module", Some(m)) => {
            need(probe::Need::PythonModule(&m), quote!(PythonModule(#m)))
        }
        (Kind::Host, "hardware_kvm", None) => host(probe::Host::HardwareKvm, quote!(HardwareKvm)),
        (Kind::Host, "no_hardware_kvm", None) => {
            host(probe::Host::NoHardwareKvm, quote!(NoHardwareKvm))
        }
        (Kind::Host, "pvm_kvm", None) => host(probe::Host::PvmKvm, quote!(PvmKvm)),
        (Kind::Host, "hybrid_cgroups", None) => {
            host(probe::Host::HybridCgroups, quote!(HybridCgroups))
        }
        (Kind::Needs, ..) => {
            return Err(err(
                "unknown need: root, kvm, guest_kernel or python_module(\"name\")",
            ))
        }
        (Kind::Host, ..) => {
            return Err(err(
                "unknown host kind: hardware_kvm, no_hardware_kvm, pvm_kvm or hybrid_cgroups",
            ))
        }
    })
}

fn expand(
    kind: Kind,
    attr: TokenStream,
    item: TokenStream,
    strict: bool,
) -> syn::Result<TokenStream> {
    let args = Punctuated::<Expr, Token![,]>::parse_terminated.parse2(attr)?;
    if args.is_empty() {
        return Err(syn::Error::new(Span::call_site(), "name at least one need"));
    }
    let args = args
        .iter()
        .map(|a| parse_arg(kind, a))
        .collect::<syn::Result<Vec<_>>>()?;
    let mut f: ItemFn = syn::parse2(item)?;
    // Above `#[test]` only: an attribute expands after the ones above it, and `#[test]` reads
    // `#[ignore]` when it expands, so one added below it would be lost.
    let is_test = |a: &syn::Attribute| a.path().segments.last().is_some_and(|s| s.ident == "test");
    if !f.attrs.iter().any(is_test) {
        return Err(syn::Error::new_spanned(
            &f.sig.ident,
            "put #[testkit::needs]/#[testkit::host] above #[test] or #[tokio::test]",
        ));
    }

    // In strict mode a missing need is not ignored: the test runs and fails with the reason.
    // A host of another kind is ignored either way.
    let reasons: Vec<String> = args
        .iter()
        .filter_map(|a| a.missing.clone())
        .filter(|_| kind == Kind::Host || !strict)
        .collect();
    let already_ignored = f.attrs.iter().any(|a| a.path().is_ident("ignore"));
    if !reasons.is_empty() && !already_ignored {
        let reason = format!(
            "{} (as probed when this test was built)",
            reasons.join("; ")
        );
        f.attrs.push(syn::parse_quote!(#[ignore = #reason]));
    }

    let runtime: Vec<&TokenStream> = args.iter().map(|a| &a.runtime).collect();
    let check = match kind {
        Kind::Needs => quote!(::testkit::require(&[#(#runtime),*]);),
        Kind::Host => quote!(::testkit::require_host(&[#(#runtime),*]);),
    };
    // `option_env!` records these variables in the crate's dep-info, so cargo rebuilds the test
    // (and probes again) when strict mode or the user changes: the ignore marks stay current.
    let track = quote! {
        let _ = (
            ::core::option_env!("RUNNER_TEST_STRICT"),
            ::core::option_env!("CI"),
            ::core::option_env!("USER"),
            ::core::option_env!("SUDO_UID"),
        );
    };
    let body = &f.block;
    f.block = syn::parse_quote!({
        #track
        #check
        #body
    });
    Ok(quote!(#f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(kind: Kind, attr: &str, strict: bool) -> String {
        expand(
            kind,
            attr.parse().unwrap(),
            quote!(
                #[test]
                fn t() {
                    body();
                }
            ),
            strict,
        )
        .unwrap()
        .to_string()
    }

    #[test]
    fn a_missing_need_is_ignored_with_its_reason_unless_strict() {
        let attr = r#"python_module("testkit_no_such_module")"#;
        let lax = expanded(Kind::Needs, attr, false);
        assert!(lax.contains("# [ignore ="), "{lax}");
        assert!(lax.contains("testkit_no_such_module"), "{lax}");
        assert!(lax.contains(":: testkit :: require"), "{lax}");
        let strict = expanded(Kind::Needs, attr, true);
        assert!(!strict.contains("ignore"), "{strict}");
        assert!(strict.contains(":: testkit :: require"), "{strict}");
    }

    #[test]
    fn a_present_need_adds_only_the_runtime_check() {
        // /proc/self/status is there wherever this runs; root may not be, python3 is.
        let out = expanded(Kind::Needs, r#"python_module("sys")"#, false);
        assert!(!out.contains("ignore"), "{out}");
        assert!(out.contains("PythonModule (\"sys\")"), "{out}");
    }

    #[test]
    fn another_kind_of_host_is_ignored_even_in_strict_mode() {
        // Exactly one of the two applies to any host.
        let hw = expanded(Kind::Host, "hardware_kvm", true);
        let no = expanded(Kind::Host, "no_hardware_kvm", true);
        assert_ne!(hw.contains("ignore"), no.contains("ignore"), "{hw}\n{no}");
        assert!(hw.contains(":: testkit :: require_host"), "{hw}");
    }

    #[test]
    fn unknown_names_are_compile_errors() {
        let t = quote!(
            #[test]
            fn t() {}
        );
        let e = expand(Kind::Needs, quote!(rooot), t.clone(), false).unwrap_err();
        assert!(e.to_string().contains("unknown need"), "{e}");
        let e = expand(Kind::Host, quote!(root), t, false).unwrap_err();
        assert!(e.to_string().contains("unknown host kind"), "{e}");
    }

    #[test]
    fn below_test_is_refused() {
        // #[test] has expanded already: an #[ignore] added now would never be seen.
        let e = expand(
            Kind::Needs,
            quote!(root),
            quote!(
                fn t() {}
            ),
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("above #[test]"), "{e}");
    }
}
