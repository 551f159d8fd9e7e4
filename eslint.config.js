// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.cache/**', 'state/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  { languageOptions: { globals: globals.node } },
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-console': 'off',
    },
  },
  {
    // The domain is pure: no Node built-ins, no adapters, no wall clock.
    files: ['src/domain/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: ['node:*', '../adapters/*', '../agent/*', '../cli/*', '../controller/*'] }],
      'no-restricted-properties': ['error', { object: 'Date', property: 'now', message: 'Take a Clock.' }],
      'no-restricted-globals': ['error', 'setTimeout', 'setInterval', 'process'],
    },
  },
  {
    // Core logic takes a Clock; only the system clock adapter reads real time.
    files: ['src/agent/**/*.ts', 'src/controller/**/*.ts', 'src/ports/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: ['../adapters/*', '../../adapters/*'] }],
      'no-restricted-properties': ['error', { object: 'Date', property: 'now', message: 'Take a Clock.' }],
      'no-restricted-globals': ['error', 'setTimeout', 'setInterval'],
    },
  },
  {
    files: ['src/adapters/**/*.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: ['../../agent/*', '../../controller/*', '../../cli/*'] }],
    },
  },
);
