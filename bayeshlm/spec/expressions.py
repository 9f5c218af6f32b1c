"""User expressions are data, never code: an allow-list for formula terms and a small evaluator for model files.

formulaic evaluates each Python factor of a formula (``log(x)``, ``I(x**2)``) with ``eval``, so a term such
as ``I(x + 0*x.__class__.__init__.__globals__[...])`` would run any code. Before anything is evaluated,
:func:`check_formula` parses every Python factor with :mod:`ast` (never ``eval``) and accepts only:

- names (data columns) that are not dunder names, numbers, and ``True``/``False``/``None``;
- the arithmetic operators ``+ - * / // % **``, unary ``+``/``-`` and comparisons (``I(x > 0)``);
- calls of a function from :data:`FORMULA_FUNCTIONS` by its bare name, with constant keyword values (and
  string constants or lists of constants as arguments, e.g. ``C(x, Treatment('a'))``, ``C(x, levels=[...])``).

Everything else -- attribute access (also ``np.log``: write ``log``), subscripts, lambdas, comprehensions,
``*args``, walrus, f-strings, other calls -- is refused with a :class:`~bayeshlm.errors.FormulaError`
naming the piece. The Python API can opt out with ``unsafe_formula=True``; model files and the command line
cannot.

:func:`evaluate` computes the ``data_columns`` and ``subset`` expressions of model files on pandas columns
node by node, with the same idea: columns, constants, arithmetic, comparisons, ``and``/``or``/``not`` and
:data:`DATA_FUNCTIONS`.
"""

from __future__ import annotations

import ast
import functools
import operator

import numpy as np
import pandas as pd

from ..errors import FormulaError, OptionError, closest_names

# Each function, why it is there (all are formulaic transforms, except sqrt and abs, passed to formulaic in
# FORMULAIC_CONTEXT so that they mean NumPy's).
FORMULA_FUNCTIONS = {
    "I": "arithmetic inside a term, I(x**2)",
    "C": "a categorical predictor, C(x) or C(x, Treatment('a'))",
    "Treatment": "contrast coding for C()", "Sum": "contrast coding for C()",
    "Helmert": "contrast coding for C()", "Poly": "contrast coding for C()", "Diff": "contrast coding for C()",
    "log": "natural logarithm", "log2": "base-2 logarithm", "log10": "base-10 logarithm",
    "exp": "exponential", "sqrt": "square root", "abs": "absolute value",
    "center": "centring at the mean", "scale": "standardising", "standardize": "standardising",
    "poly": "orthogonal polynomials", "bs": "B-spline basis", "cr": "natural cubic spline basis",
    "cs": "natural cubic spline basis", "cc": "cyclic cubic spline basis",
}
FORMULAIC_CONTEXT = {"sqrt": np.sqrt, "abs": np.abs}
# one positional argument and no keywords: a NumPy ufunc's second argument is `out`, which would overwrite data
ONE_ARGUMENT = ("I", "log", "log2", "log10", "exp", "sqrt", "abs")
BASIS_FUNCTIONS = ("poly", "bs", "cr", "cs", "cc")  # their degree / df sets how many columns they make
MAX_BASIS_COLUMNS = 50
CONTRASTS = ("Treatment", "Sum", "Helmert", "Poly", "Diff")  # may also be passed uncalled: C(x, Sum)


def _formulaic_names() -> frozenset[str]:
    """formulaic's own names that are not on the list (``np``, ``contr``, ``lag``, ``Q``, ...): refused as values."""
    from formulaic.transforms import TRANSFORMS

    return frozenset(TRANSFORMS) - FORMULA_FUNCTIONS.keys()


_FORMULAIC_NAMES = _formulaic_names()

_BINARY = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_UNARY = (ast.UAdd, ast.USub)
_COMPARE = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_MAX_CONSTANT_EXPONENT = 64  # 10**6 is fine; 10**10**10 would hang Python's integer arithmetic

# What a refused node is, in words.
_NODE_WORDS = {
    ast.Attribute: "attribute access", ast.Subscript: "subscript", ast.Lambda: "lambda",
    ast.ListComp: "comprehension", ast.SetComp: "comprehension", ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression", ast.Starred: "starred argument", ast.NamedExpr: "assignment (:=)",
    ast.JoinedStr: "f-string", ast.FormattedValue: "f-string", ast.IfExp: "conditional expression",
    ast.Dict: "dict", ast.Set: "set", ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.BoolOp: "and/or", ast.Slice: "slice",
}


def allowed_functions() -> str:
    return ", ".join(FORMULA_FUNCTIONS)


# --- formulas ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1024)  # a pure check, repeated for every model built from the same terms
def check_formula(text: str, where: str) -> None:
    """Refuse ``text`` (a formula right-hand side or one factor) unless every Python factor is allowed.

    formulaic decides which pieces are Python code: a plain column name is looked up, a number is a literal,
    anything else (``log(x)``, ``{x + 1}``, ``I(`a b` + 1)``) is evaluated, so those are the pieces checked,
    exactly as formulaic will see them (backtick-quoted names replaced by identifiers the same way).
    """
    import formulaic
    from formulaic.errors import FormulaicError
    from formulaic.formula import StructuredFormula
    from formulaic.parser.types import Factor
    from formulaic.utils.code import sanitize_variable_names

    try:
        parsed = formulaic.Formula(text)
    except (FormulaicError, SyntaxError, ValueError) as err:  # formulaic passes on ast's SyntaxError
        raise FormulaError(f"Cannot read {text!r} in {where}: {str(err).splitlines()[0]}") from None
    sides = parsed._flatten() if isinstance(parsed, StructuredFormula) else [parsed]
    for side in sides:
        for term in side:
            for factor in term.factors:
                if factor.eval_method == Factor.EvalMethod.PYTHON:
                    code = sanitize_variable_names(factor.expr, {}, {})
                    check_python_expression(code, shown=str(factor), where=where)


def check_python_expression(code: str, *, shown: str | None = None, where: str = "the formula") -> None:
    """Refuse the Python expression ``code`` unless every node is on the formula allow-list."""
    shown = code if shown is None else shown
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError:
        raise FormulaError(f"Cannot read the formula term {shown!r} in {where}: it is not a valid expression. "
                           f"Allowed are column names, numbers, + - * / ** and the functions "
                           f"{allowed_functions()}.") from None
    _FormulaChecker(shown, where).visit(tree.body)


class _FormulaChecker(ast.NodeVisitor):
    def __init__(self, shown: str, where: str):
        self.shown, self.where = shown, where

    def refuse(self, what: str, hint: str = "") -> None:
        raise FormulaError(f"{what} is not allowed in formula term {self.shown!r} ({self.where}); formula terms "
                           f"may use column names, numbers, + - * / ** and the functions {allowed_functions()}."
                           f"{hint}")

    def generic_visit(self, node: ast.AST) -> None:
        words = _NODE_WORDS.get(type(node), type(node).__name__)
        if isinstance(node, ast.Attribute):
            hint = (f" Write {node.attr}(...) instead of {ast.unparse(node)}(...)."
                    if node.attr in FORMULA_FUNCTIONS else "")
            self.refuse(f"attribute access '.{node.attr}'", hint)
        self.refuse(f"{words} '{_snippet(node)}'")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__") or node.id in _FORMULAIC_NAMES:
            self.refuse(f"the name {node.id!r}")
        if node.id in FORMULA_FUNCTIONS and node.id not in CONTRASTS:
            self.refuse(f"the function {node.id!r} used as a value", f" Call it: {node.id}(x).")

    def visit_Constant(self, node: ast.Constant) -> None:
        if not isinstance(node.value, int | float | str | bool | type(None)):
            self.refuse(f"the constant {node.value!r}")

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if type(node.op) not in _BINARY:
            self.refuse(f"the operator in '{_snippet(node)}'")
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                self.refuse(f"text in arithmetic '{_snippet(node)}'")
        if isinstance(node.op, ast.Pow) and _constant_only(node.left) and _constant_only(node.right):
            small = (_is_constant(node.left) and _is_constant(node.right)
                     and abs(ast.literal_eval(node.right) or 0) <= _MAX_CONSTANT_EXPONENT)
            if not small:
                self.refuse(f"the constant power '{_snippet(node)}'", " Write the number itself (e.g. 1e6).")
        self.visit(node.left)
        self.visit(node.right)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if type(node.op) not in _UNARY:
            self.refuse(f"the operator in '{_snippet(node)}'")
        self.visit(node.operand)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(type(op) not in _COMPARE for op in node.ops):
            self.refuse(f"the comparison '{_snippet(node)}'")
        for child in (node.left, *node.comparators):
            self.visit(child)

    def visit_Call(self, node: ast.Call) -> None:
        if not isinstance(node.func, ast.Name):
            self.visit(node.func)  # refuses attribute access and any other callee with its own message
            self.refuse(f"the call '{_snippet(node)}'")
        if node.func.id not in FORMULA_FUNCTIONS:
            self.refuse(f"the function {node.func.id!r}")
        if node.func.id in ONE_ARGUMENT and (len(node.args) != 1 or node.keywords):
            self.refuse(f"'{_snippet(node)}'", f" {node.func.id}() takes exactly one argument.")
        if node.func.id in BASIS_FUNCTIONS:
            self._check_basis_size(node)
        for arg in node.args:
            self._argument(arg)
        for keyword in node.keywords:
            if keyword.arg is None:
                self.refuse(f"the argument '**{_snippet(keyword.value)}'")
            if keyword.arg.startswith("_"):
                self.refuse(f"the keyword {keyword.arg!r}")
            if not isinstance(keyword.value, ast.Name | ast.Constant | ast.List | ast.Tuple | ast.UnaryOp):
                self.refuse(f"the keyword value '{keyword.arg}={_snippet(keyword.value)}'",
                            " Keyword values must be numbers, text, True/False or a list of them.")
            self._argument(keyword.value)

    def _check_basis_size(self, node: ast.Call) -> None:
        """A basis of more than MAX_BASIS_COLUMNS columns (poly(x, 10**6)) would exhaust memory, not fit a model."""
        sizes = node.args[1:2] + [k.value for k in node.keywords if k.arg in ("degree", "df")]
        for size in sizes:
            value = size.value if isinstance(size, ast.Constant) else None
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_BASIS_COLUMNS:
                self.refuse(f"'{_snippet(node)}'", f" Give its degree or df as a whole number from 0 to "
                                                   f"{MAX_BASIS_COLUMNS}, e.g. {node.func.id}(x, 3).")

    def _argument(self, node: ast.expr) -> None:
        if isinstance(node, ast.List | ast.Tuple):
            for item in node.elts:
                if not _is_constant(item):
                    self.refuse(f"the list item '{_snippet(item)}'", " Lists may hold numbers or text only.")
            return
        self.visit(node)


def _is_constant(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool | type(None))


def _constant_only(node: ast.expr) -> bool:
    return not any(isinstance(n, ast.Name | ast.Call) for n in ast.walk(node))


def _snippet(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[:limit] + "..."


def check_spec(spec) -> None:
    """Check every expression of a :class:`~bayeshlm.spec.ModelSpec` (outcome, terms, log-linear variance)."""
    outcome = spec.outcome
    if not (isinstance(outcome, str) and outcome.isidentifier()):
        check_formula(str(outcome), "the outcome")
    terms = [("the fixed effects", t) for t in spec.fixed]
    terms += [(f"the random effects for {r.group!r}", t) for r in spec.random for t in r.terms]
    for where, term in terms:
        for factor in term:
            check_formula(factor, where)
    if spec.residual is not None and spec.residual.variance_formula:
        check_formula(spec.residual.variance_formula, "level1_variance")


# --- model-file expressions: data_columns and subset ------------------------------------------------------

DATA_FUNCTIONS = {"log": np.log, "exp": np.exp, "sqrt": np.sqrt, "abs": np.abs}
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_COMPARISONS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
                ast.Gt: operator.gt, ast.GtE: operator.ge}


def evaluate(text: str, frame: pd.DataFrame, what: str):
    """Value of the model-file expression ``text`` on the columns of ``frame`` (a Series or a scalar).

    Grammar: column names (``\\`a b\\``` for names with spaces), numbers, text, lists of constants, ``+ - * /
    // % **``, comparisons (``== != < <= > >=``, ``in`` / ``not in`` a list), ``and``, ``or``, ``not`` and
    the functions log, exp, sqrt, abs. Anything else raises :class:`OptionError` naming the piece.
    """
    if not isinstance(text, str):
        raise OptionError(f"{what}: expected an expression in quotes; got {text!r}.")
    names = {}
    code = _quote_backticks(text, names, what)
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError:
        hint = " ('@' variables are not available in model files)" if "@" in text else ""
        raise OptionError(f"{what}: {text!r} is not a valid expression{hint}. Use column names, numbers, "
                          "text in quotes, arithmetic, comparisons, and/or/not and log, exp, sqrt, abs.") from None
    try:
        with np.errstate(all="ignore"):
            return _Evaluator(frame, names, text, what).value(tree.body)
    except (TypeError, ValueError, ArithmeticError) as err:
        if isinstance(err, OptionError):
            raise
        raise OptionError(f"{what}: cannot compute {text!r}; check that the columns have the types the "
                          "expression needs (numbers for arithmetic, true/false for and/or/not).") from None


def _quote_backticks(text: str, names: dict, what: str) -> str:
    """Replace each backtick-quoted column name (outside string quotes) by a placeholder identifier."""
    out, position, quote = [], 0, None
    while position < len(text):
        char = text[position]
        if quote:
            if char == "\\":
                out.append(text[position:position + 2])
                position += 2
                continue
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "`":
            end = text.find("`", position + 1)
            if end < 0:
                raise OptionError(f"{what}: {text!r} has a '`' that is never closed.")
            placeholder = f"_column_{len(names)}_"
            names[placeholder] = text[position + 1:end]
            out.append(f" {placeholder} ")
            position = end + 1
            continue
        out.append(char)
        position += 1
    return "".join(out)


class _Evaluator:
    def __init__(self, frame: pd.DataFrame, quoted: dict, text: str, what: str):
        self.frame, self.quoted, self.text, self.what = frame, quoted, text, what

    def refuse(self, piece: str, hint: str = "") -> None:
        raise OptionError(f"{self.what}: {piece} is not allowed in {self.text!r}. Use column names, numbers, text "
                          f"in quotes, arithmetic, comparisons, and/or/not and log, exp, sqrt, abs.{hint}")

    def value(self, node: ast.expr):
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            if isinstance(node, ast.Attribute):
                self.refuse(f"attribute access '.{node.attr}'")
            self.refuse(f"{_NODE_WORDS.get(type(node), type(node).__name__)} '{_snippet(node)}'")
        return method(node)

    def _Name(self, node: ast.Name):
        name = self.quoted.get(node.id, node.id)
        if name not in self.frame.columns:
            raise OptionError(f"{self.what}: {name!r} in {self.text!r} is not a column."
                              f"{closest_names(name, map(str, self.frame.columns))}")
        return self.frame[name]

    def _Constant(self, node: ast.Constant):
        value = node.value
        if isinstance(value, bool) or isinstance(value, str):
            return value
        if isinstance(value, int | float):
            return float(value)  # float arithmetic overflows to inf instead of building huge integers
        self.refuse(f"the constant {value!r}")

    def _List(self, node):
        return [self._literal(item) for item in node.elts]

    _Tuple = _List

    def _literal(self, node: ast.expr):
        if not _is_constant(node):
            self.refuse(f"the list item '{_snippet(node)}'", " Lists may hold numbers or text only.")
        return ast.literal_eval(node)

    def _BinOp(self, node: ast.BinOp):
        if type(node.op) not in _ARITHMETIC:
            self.refuse(f"the operator in '{_snippet(node)}'")
        left, right = self.value(node.left), self.value(node.right)
        if any(isinstance(v, str | list) for v in (left, right)):
            self.refuse(f"arithmetic on text or a list '{_snippet(node)}'")
        try:
            return _ARITHMETIC[type(node.op)](left, right)
        except (TypeError, ValueError, ArithmeticError):
            raise OptionError(f"{self.what}: cannot compute '{_snippet(node)}' in {self.text!r}; "
                              "check that the columns are numeric.") from None

    def _UnaryOp(self, node: ast.UnaryOp):
        operand = self.value(node.operand)
        if isinstance(node.op, ast.Not):
            return ~operand if isinstance(operand, pd.Series) else not operand
        if type(node.op) not in _UNARY or isinstance(operand, str | list):
            self.refuse(f"the operator in '{_snippet(node)}'")
        return -operand if isinstance(node.op, ast.USub) else +operand

    def _BoolOp(self, node: ast.BoolOp):
        values = [self.value(v) for v in node.values]
        result = values[0]
        for v in values[1:]:
            result = (result & v) if isinstance(node.op, ast.And) else (result | v)
        return result

    def _Compare(self, node: ast.Compare):
        result, left = True, self.value(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(comparator, ast.List | ast.Tuple) or not isinstance(left, pd.Series):
                    self.refuse(f"'{_snippet(node)}'", " Write 'column in [value, ...]'.")
                test = left.isin(self._List(comparator))
                right, outcome = left, (~test if isinstance(op, ast.NotIn) else test)
            elif type(op) in _COMPARISONS:
                right = self.value(comparator)
                try:
                    outcome = _COMPARISONS[type(op)](left, right)
                except TypeError:
                    raise OptionError(f"{self.what}: cannot compare '{_snippet(node)}' in {self.text!r}; "
                                      "check the column types.") from None
            else:
                self.refuse(f"the comparison '{_snippet(node)}'")
            result = outcome if result is True else result & outcome
            left = right
        return result

    def _Call(self, node: ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in DATA_FUNCTIONS:
            if isinstance(node.func, ast.Attribute):
                self.refuse(f"attribute access '.{node.func.attr}'")
            self.refuse(f"the call '{_snippet(node)}'")
        if node.keywords or len(node.args) != 1:
            self.refuse(f"'{_snippet(node)}'", f" {node.func.id}() takes one argument.")
        argument = self.value(node.args[0])
        if isinstance(argument, str | list):
            self.refuse(f"'{_snippet(node)}'", f" {node.func.id}() takes a number or a numeric column.")
        try:
            return DATA_FUNCTIONS[node.func.id](argument)
        except TypeError:
            raise OptionError(f"{self.what}: cannot compute '{_snippet(node)}' in {self.text!r}; "
                              "check that the column is numeric.") from None
