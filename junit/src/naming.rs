//! Which given test each case of a JUnit report is, pure. Tools name the
//! same test in different ways (`classname.name`, a bare name, a pytest
//! node id, a spec file in `file`, in the suite or in `classname`), and a
//! CI job queues tests as its tool takes them (files, classes, describe
//! blocks, test ids). A case is matched to the shard's tests under every
//! convention, so a user never has to say how their tool names tests.
//!
//! The rules, in order (the first that matches decides):
//!
//! 1. **Exact**: the first of the case's ids that is a given test, tried
//!    as the pytest node id (for pytest's cases), `file::name` for each
//!    file the case names (its `file`, its suite's `file`, a `classname`
//!    that is a file), the bare `name`, `classname.name`, then
//!    `classname::name` (PHPUnit's `CartTest::testTotal`).
//! 2. **Under a given test**: an id that starts with a given test where a
//!    word ends (`tests/test_cart.py` covers `tests/test_cart.py::test_total[1]`,
//!    `Cart` covers `Cart adds items`, `com.example.CartTest` covers
//!    `com.example.CartTest.adds`); the longest such given test wins, then
//!    the earlier id in the order above.
//! 3. **The same file under another root**: a file the case names that ends
//!    with a given file (an absolute path, `/ci/repo/tests/cart.spec.js` for
//!    `tests/cart.spec.js`), else a given file that ends with it (a path
//!    relative to the tool's root, `cart.spec.js` for
//!    `tests/cart.spec.js`); the case is `given::name`. When several given
//!    files end with the same path, the first in sort order is taken.
//! 4. **Unmatched**: the case keeps the id its tool knows it by
//!    ([`JunitCase::natural_id`]) and is a test the shard was not given.
//!
//! A `names=` override (classname, pytest, name) names every case under
//! that one convention instead, with no matching.

use crate::{JunitCase, NameFormat};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};

/// Extensions of the source files test tools name in `classname`
/// (Playwright and vitest write the spec file there).
const SOURCE_EXTENSIONS: &[&str] = &[
    "js", "jsx", "mjs", "cjs", "ts", "tsx", "mts", "cts", "py", "rb", "go", "rs", "java", "kt",
    "php", "cs", "swift", "feature",
];

/// A shard's given tests, indexed for matching report names to them.
pub struct Given<'a> {
    tests: HashSet<&'a str>,
    /// Each path tail of a given path (`cart.spec.js` and
    /// `tests/cart.spec.js` of `e2e/tests/cart.spec.js`) to the given paths
    /// that end with it, in sort order; built when first needed (most
    /// reports match without it).
    tails: OnceCell<HashMap<&'a str, Vec<&'a str>>>,
}

impl<'a> Given<'a> {
    pub fn new(given: &'a [String]) -> Self {
        Given {
            tests: given.iter().map(String::as_str).collect(),
            tails: OnceCell::new(),
        }
    }

    fn tails(&self) -> &HashMap<&'a str, Vec<&'a str>> {
        self.tails.get_or_init(|| {
            let mut tails: HashMap<&str, Vec<&str>> = HashMap::new();
            for test in &self.tests {
                for (i, _) in test.match_indices('/') {
                    let tail = &test[i + 1..];
                    if !tail.is_empty() {
                        tails.entry(tail).or_default().push(test);
                    }
                }
            }
            for paths in tails.values_mut() {
                paths.sort_unstable();
            }
            tails
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The given test itself, if `name` is one.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.tests.get(name).copied()
    }

    /// The given test a reported name belongs to: itself, or the longest
    /// given prefix that ends where a word ends.
    pub fn owner(&self, name: &str) -> Option<&'a str> {
        if let Some(found) = self.get(name) {
            return Some(found);
        }
        name.char_indices()
            .rev()
            .filter(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .find_map(|(i, _)| self.get(&name[..i]))
    }

    /// The given file that `file` is under another root (rule 3).
    fn same_file(&self, file: &str) -> Option<&'a str> {
        let file = file.strip_prefix("./").unwrap_or(file);
        // `file` ends with a given path (longest first).
        let inside = std::iter::once(file)
            .chain(file.match_indices('/').map(|(i, _)| &file[i + 1..]))
            .find_map(|tail| self.get(tail));
        inside.or_else(|| {
            self.tails()
                .get(file)
                .and_then(|paths| paths.first().copied())
        })
    }
}

/// The files a case names, most specific first.
fn files_of(case: &JunitCase) -> Vec<&str> {
    let classname_is_file = case
        .classname
        .rsplit_once('.')
        .is_some_and(|(_, ext)| SOURCE_EXTENSIONS.contains(&ext))
        || case.classname.contains('/');
    let mut files: Vec<&str> = Vec::new();
    for file in [
        case.file.as_deref(),
        case.suite_file.as_deref(),
        classname_is_file.then_some(case.classname.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        if !file.is_empty() && !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// The case's ids under every convention, in the order of rule 1. A node
/// id only for pytest's cases (in a pytest report or a `.py` file): the
/// dotted classnames of other tools would read as made-up module paths.
fn candidates(case: &JunitCase, files: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = case
        .is_python()
        .then(|| case.pytest_id())
        .into_iter()
        .collect();
    ids.extend(files.iter().map(|f| format!("{f}::{}", case.name)));
    ids.push(case.name.clone());
    ids.push(case.test_id(NameFormat::Classname));
    if !case.classname.is_empty() {
        ids.push(format!("{}::{}", case.classname, case.name));
    }
    ids
}

/// The id of a case matched to no given tests (an imported report, a
/// shard given the whole suite): under `format`, else the id its tool
/// knows it by.
pub fn own_id(case: &JunitCase, format: Option<NameFormat>) -> String {
    format.map_or_else(|| case.natural_id(), |f| case.test_id(f))
}

/// The test id of `case` in a shard given `given` (see the module's rules),
/// or under `format` when the report says how its tool names tests.
pub fn resolve(case: &JunitCase, given: &Given, format: Option<NameFormat>) -> String {
    if format.is_some() || given.is_empty() {
        return own_id(case, format);
    }
    let files = files_of(case);
    let ids = candidates(case, &files);
    if let Some(exact) = ids.iter().find(|id| given.get(id).is_some()) {
        return exact.clone();
    }
    let mut under: Option<(usize, &String)> = None;
    for id in &ids {
        if let Some(owner) = given.owner(id) {
            if under.is_none_or(|(len, _)| owner.len() > len) {
                under = Some((owner.len(), id));
            }
        }
    }
    if let Some((_, id)) = under {
        return id.clone();
    }
    if let Some(file) = files.iter().find_map(|f| given.same_file(f)) {
        return format!("{file}::{}", case.name);
    }
    case.natural_id()
}

/// Expected durations of queued tests that have none of their own, rolled
/// up from the known durations of the tests under them (rule 2's
/// ownership: `tests/test_cart.py` owns `tests/test_cart.py::test_total`,
/// `com.example.CartTest` owns `com.example.CartTest.adds`): a file, class
/// or describe block queued whole is expected to take what its cases
/// took. A queued test that owns none gets nothing.
pub fn roll_up<'k>(
    queued: &[String],
    known: impl IntoIterator<Item = (&'k str, u64)>,
) -> HashMap<String, u64> {
    let given = Given::new(queued);
    let mut sums: HashMap<String, u64> = HashMap::new();
    for (name, ms) in known {
        if given.get(name).is_some() {
            continue;
        }
        if let Some(owner) = given.owner(name) {
            *sums.entry(owner.to_owned()).or_default() += ms;
        }
    }
    sums
}

#[cfg(test)]
mod roll_up_tests {
    use super::*;

    #[test]
    fn a_file_class_or_block_queued_whole_is_expected_to_take_what_its_cases_took() {
        let queued: Vec<String> = [
            "tests/test_cart.py",
            "com.example.CartTest",
            "Cart page",
            "new",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let known = [
            ("tests/test_cart.py::test_total", 300),
            ("tests/test_cart.py::TestTax::test_vat[de]", 200),
            ("tests/test_cart.py", 50_000),
            ("tests/test_cart_extra.py::x", 7),
            ("com.example.CartTest.adds", 40),
            ("com.example.CartTestHelper.x", 9),
            ("Cart page shows totals", 1_000),
        ];
        let sums = roll_up(&queued, known);
        assert_eq!(
            sums.get("tests/test_cart.py"),
            Some(&500),
            "its own timing is not a case"
        );
        assert_eq!(sums.get("com.example.CartTest"), Some(&40));
        assert_eq!(sums.get("Cart page"), Some(&1_000));
        assert_eq!(sums.get("new"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(classname: &str, name: &str) -> JunitCase {
        JunitCase::new(classname, name)
    }

    fn given(tests: &[&str]) -> Vec<String> {
        tests.iter().map(|t| t.to_string()).collect()
    }

    fn resolved(c: &JunitCase, tests: &[&str]) -> String {
        let tests = given(tests);
        resolve(c, &Given::new(&tests), None)
    }

    #[test]
    fn a_case_is_the_given_test_its_tool_names_in_any_convention() {
        // The tool writes a classname the CI job never used.
        assert_eq!(resolved(&case("fake", "t0"), &["t0"]), "t0");
        assert_eq!(
            resolved(
                &case("com.example.CartTest", "adds"),
                &["com.example.CartTest.adds"]
            ),
            "com.example.CartTest.adds"
        );
        let pytest = JunitCase {
            from_pytest: true,
            ..case("tests.test_cart.TestCart", "test_add")
        };
        assert_eq!(
            resolved(&pytest, &["tests/test_cart.py::TestCart::test_add"]),
            "tests/test_cart.py::TestCart::test_add"
        );
    }

    #[test]
    fn phpunits_class_and_method_is_a_test_id() {
        assert_eq!(
            resolved(&case("CartTest", "testTotal"), &["CartTest::testTotal"]),
            "CartTest::testTotal"
        );
    }

    #[test]
    fn a_file_class_or_describe_block_given_covers_its_cases() {
        let pytest = JunitCase {
            from_pytest: true,
            ..case("tests.test_cart.TestCart", "test_add[1]")
        };
        assert_eq!(
            resolved(&pytest, &["tests/test_cart.py"]),
            "tests/test_cart.py::TestCart::test_add[1]"
        );
        assert_eq!(
            resolved(&case("Cart adds items", "Cart adds items"), &["Cart"]),
            "Cart adds items"
        );
        assert_eq!(
            resolved(&case("cart.spec.js", "cart › adds"), &["cart.spec.js"]),
            "cart.spec.js::cart › adds"
        );
        assert_eq!(
            resolved(
                &case("com.example.CartTest", "adds"),
                &["com.example.CartTest"]
            ),
            "com.example.CartTest.adds"
        );
        // The longest given test a name is under wins.
        assert_eq!(
            resolved(&case("", "Cart total adds"), &["Cart", "Cart total"]),
            "Cart total adds"
        );
    }

    #[test]
    fn a_spec_file_is_matched_under_another_root() {
        let jest = JunitCase {
            file: Some("/ci/repo/jest/cart.test.js".into()),
            ..case("Cart adds items", "Cart adds items")
        };
        assert_eq!(
            resolved(&jest, &["jest/cart.test.js"]),
            "jest/cart.test.js::Cart adds items"
        );
        let mocha = JunitCase {
            suite_file: Some("/tmp/fx/mocha/cart.spec.js".into()),
            ..case("adds items", "Cart adds items")
        };
        assert_eq!(
            resolved(&mocha, &["mocha/cart.spec.js"]),
            "mocha/cart.spec.js::Cart adds items"
        );
        // vitest names the file from its own root.
        let vitest = case("cart.test.js", "Cart > adds items");
        assert_eq!(
            resolved(&vitest, &["web/vitest/cart.test.js"]),
            "web/vitest/cart.test.js::Cart > adds items"
        );
        // Two given files end the same way: the first in sort order.
        assert_eq!(
            resolved(&vitest, &["b/cart.test.js", "a/cart.test.js"]),
            "a/cart.test.js::Cart > adds items"
        );
    }

    #[test]
    fn an_exact_match_outranks_a_file_and_a_prefix() {
        let c = case("Cart", "adds");
        assert_eq!(resolved(&c, &["Cart", "adds"]), "adds");
        assert_eq!(resolved(&c, &["Cart", "Cart.adds"]), "Cart.adds");
    }

    #[test]
    fn a_case_no_given_test_matches_keeps_its_tools_id() {
        assert_eq!(resolved(&case("A", "b"), &["c"]), "A.b");
        let pytest = JunitCase {
            from_pytest: true,
            ..case("tests.test_cart", "test_add")
        };
        assert_eq!(
            resolved(&pytest, &["other"]),
            "tests/test_cart.py::test_add"
        );
        assert_eq!(resolved(&pytest, &[]), "tests/test_cart.py::test_add");
        // A word continues: `test` does not cover `test_add`.
        assert_eq!(resolved(&case("", "test_add"), &["test"]), "test_add");
    }

    #[test]
    fn an_override_names_every_case_one_way() {
        let tests = given(&["t0"]);
        let g = Given::new(&tests);
        assert_eq!(
            resolve(&case("fake", "t0"), &g, Some(NameFormat::Classname)),
            "fake.t0"
        );
    }
}
